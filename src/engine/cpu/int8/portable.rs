//! The int8 kernels' definition, written plainly: the path on CPUs without the SIMD ones,
//! and the reference every SIMD path is tested against, bit for bit.
//!
//! For output row r (a weight row) and activation row j, with `u` the weights' unsigned
//! integers, `x̂` the activations' integers and every integer sum exact:
//!
//! - classic formats, per 32-value block b in order:
//!   `I = Σ u·x̂ − zero·Σx̂`, `acc = fma(f32(I), d_w · d_x, acc)`, and for Q4_1/Q5_1
//!   `acc = fma(m_w, d_x · f32(Σx̂), acc)`; Q8_0's `u` is its signed byte, with no zero;
//! - Q4_K/Q5_K, per 256-value super-block in order: `I = Σₛ scₛ · Σ u·x̂`,
//!   `M = Σₛ mₛ · Σₛx̂` over the eight 32-value sub-blocks, then
//!   `acc = fma(f32(I), d · d_x, acc)` and `acc = fma(f32(M), −(dmin · d_x), acc)`;
//! - Q6_K, per super-block: `I = Σₜ scₜ · (Σ u·x̂ − 32·Σₜx̂)` over the sixteen 16-value
//!   sub-blocks, `acc = fma(f32(I), d · d_x, acc)`.
//!
//! A SIMD path may add the integers in any order (they are exact) but must do these float
//! operations, in this order: then a row's result is the same on every ISA, in every batch,
//! however its prompt was chunked.

use super::layout::{Layout, PANEL};
use super::packed::{PackedMatrix, unsigned_value};
use super::rows::Int8Rows;
use crate::engine::cpu::formats::QuantFormat;

fn half(record: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([record[at], record[at + 1]]).to_f32()
}

/// Weight value k of row r of a 32-value span, as the definition multiplies it.
fn weight(l: &Layout, span: &[u8], r: usize, k: usize) -> i32 {
    let u = unsigned_value(l, span, r, k);
    if l.format == QuantFormat::Q8_0 {
        i32::from(u as i8)
    } else {
        i32::from(u)
    }
}

/// Σ weight·x̂ over values `ks` of row r of a span.
fn span_dot(l: &Layout, span: &[u8], r: usize, x: &[i8], ks: std::ops::Range<usize>) -> i32 {
    ks.map(|k| weight(l, span, r, k) * i32::from(x[k])).sum()
}

/// Panel `p` of `m` against activation row `j`: the panel's sixteen outputs.
pub fn panel_dot(m: &PackedMatrix, p: usize, x: &Int8Rows, j: usize) -> [f32; PANEL] {
    let l = &m.layout;
    let xq = x.row(j);
    let dx = x.row_d(j);
    let mut acc = [0f32; PANEL];
    for (b, record) in m.panel(p).chunks_exact(l.record).enumerate() {
        let span = |i: usize| &record[l.weights + i * l.weights_stride..];
        let xs = |i: usize| &xq[b * l.block + 32 * i..b * l.block + 32 * i + 32];
        for (r, acc) in acc.iter_mut().enumerate() {
            let d = half(record, l.scales + 2 * r);
            match l.format {
                QuantFormat::Q4K | QuantFormat::Q5K => {
                    let (sc, mn) = (l.sub_scales.unwrap_or(0), l.sub_mins.unwrap_or(0));
                    let sums = x.row_sum32(j);
                    let (mut i, mut mins) = (0i32, 0i32);
                    for s in 0..8 {
                        i += span_dot(l, span(s), r, xs(s), 0..32)
                            * i32::from(record[sc + s * PANEL + r]);
                        mins += i32::from(record[mn + s * PANEL + r]) * sums[8 * b + s];
                    }
                    let dmin = half(record, l.mins.unwrap_or(0) + 2 * r);
                    *acc = (i as f32).mul_add(d * dx[b], *acc);
                    *acc = (mins as f32).mul_add(-(dmin * dx[b]), *acc);
                }
                QuantFormat::Q6K => {
                    let sc = l.sub_scales.unwrap_or(0);
                    let sums = x.row_sum16(j);
                    let mut i = 0i32;
                    for t in 0..16 {
                        let (s, ks) = (t / 2, if t % 2 == 0 { 0..16 } else { 16..32 });
                        let dot = span_dot(l, span(s), r, xs(s), ks) - 32 * sums[16 * b + t];
                        i += dot * i32::from(record[sc + t * PANEL + r] as i8);
                    }
                    *acc = (i as f32).mul_add(d * dx[b], *acc);
                }
                _ => {
                    let sum = x.row_sum32(j)[b];
                    let i = span_dot(l, span(0), r, xs(0), 0..32) - l.zero * sum;
                    *acc = (i as f32).mul_add(d * dx[b], *acc);
                    if let Some(at) = l.mins {
                        *acc = half(record, at + 2 * r).mul_add(x.row_dsum(j)[b], *acc);
                    }
                }
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::int8::packed::random_blocks;

    /// Against f64 arithmetic on the dequantized weights and the rounded activations: the
    /// only differences are f32 rounding.
    #[test]
    fn the_definition_is_the_dot_product_of_what_the_integers_stand_for() {
        use QuantFormat::*;
        for format in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            let (rows, cols) = (16, 512);
            let m = PackedMatrix::pack(format, rows, cols, &random_blocks(format, rows, cols, 3))
                .unwrap();
            let xs: Vec<f32> = (0..cols)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
                .collect();
            let group = if format.is_k_quant() { 256 } else { 32 };
            let x = Int8Rows::quantize(&xs, 1, cols, group);
            let got = panel_dot(&m, 0, &x, 0);
            let mut w = vec![0f32; cols];
            for (r, &g) in got.iter().enumerate() {
                m.row_f32(r, &mut w);
                let (mut exact, mut magnitude) = (0f64, 0f64);
                for (c, &wv) in w.iter().enumerate() {
                    let xv = f64::from(x.row_d(0)[c / group]) * f64::from(x.q[c]);
                    exact += f64::from(wv) * xv;
                    magnitude += (f64::from(wv) * xv).abs();
                }
                assert!(
                    (f64::from(g) - exact).abs() <= 1e-5 * magnitude + 1e-6,
                    "{format:?} row {r}: {g} vs {exact}"
                );
            }
        }
    }
}
