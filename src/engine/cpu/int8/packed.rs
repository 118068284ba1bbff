//! Quantized weight matrices repacked once, at load, into the panels the int8 kernels read
//! (the layout is in [`super::layout`]).
//!
//! Packing reads each GGUF block, takes its unsigned integers, scales and minimums apart,
//! and writes them interleaved sixteen rows at a time. Nothing is rounded: every weight
//! dequantizes from the panels to exactly what it dequantizes to from the file.

use anyhow::bail;
use half::f16;

use super::layout::{Layout, MASKS, NIBBLES, PANEL, mask_at, nibble_at};
use crate::engine::cpu::formats::{QuantFormat, scale_min_k4};

/// A `rows × cols` quantized matrix in panels.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    /// `rows.div_ceil(PANEL)` panels of `panel_bytes` each; rows past `rows` are zeros.
    pub data: Vec<u8>,
    pub panel_bytes: usize,
}

/// One block of one row as the file has it, taken apart.
struct SourceBlock {
    /// The unsigned integers, `block` of them.
    u: [u8; 256],
    /// f16 bits of the scale.
    d: u16,
    /// f16 bits of the minimum (Q4_1/Q5_1) or of `dmin` (Q4_K/Q5_K).
    m: u16,
    /// K-quants: sub-block scales (Q6_K: 16 signed, as bits).
    sub_scales: [u8; 16],
    /// Q4_K/Q5_K: sub-block minimums.
    sub_mins: [u8; 8],
}

impl PackedMatrix {
    /// Packs `rows × cols` weights held as GGUF blocks of `format` (row-major, each row
    /// `cols / unit_len` blocks).
    pub fn pack(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> anyhow::Result<Self> {
        let layout = Layout::of(format);
        if rows == 0 || cols == 0 || !cols.is_multiple_of(layout.block) {
            bail!(
                "a {rows}×{cols} matrix cannot hold whole {} blocks",
                format.name()
            );
        }
        let row_bytes = cols / format.unit_len() * format.unit_bytes();
        if bytes.len() != rows * row_bytes {
            bail!(
                "{} bytes do not make a {rows}×{cols} {} matrix ({} expected)",
                bytes.len(),
                format.name(),
                rows * row_bytes
            );
        }
        let panels = rows.div_ceil(PANEL);
        let panel_bytes = layout.panel_bytes(cols);
        let mut data = vec![0u8; panels * panel_bytes];
        let out = SharedBytes(data.as_mut_ptr());
        // Panels are independent: they are packed on the kernels' workers (a 7B model's
        // weights would take half a minute on one thread).
        crate::engine::cpu::pool::pool().chunked(panels, &|range| {
            for p in range {
                // SAFETY: panel p's bytes are inside `data`, and only this worker writes them.
                let panel =
                    unsafe { std::slice::from_raw_parts_mut(out.at(p * panel_bytes), panel_bytes) };
                pack_panel(
                    &layout,
                    bytes,
                    row_bytes,
                    rows - p * PANEL,
                    p * PANEL,
                    panel,
                );
            }
        });
        Ok(PackedMatrix {
            layout,
            rows,
            cols,
            data,
            panel_bytes,
        })
    }

    pub fn format(&self) -> QuantFormat {
        self.layout.format
    }

    pub fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// Records per panel.
    pub fn blocks(&self) -> usize {
        self.cols / self.layout.block
    }

    pub fn panel(&self, p: usize) -> &[u8] {
        &self.data[p * self.panel_bytes..(p + 1) * self.panel_bytes]
    }

    /// Stacks matrices of one format and width into one (fused q/k/v, gate/up): None when
    /// they differ, or when a part other than the last does not fill its last panel.
    pub fn stack(parts: &[&PackedMatrix]) -> Option<PackedMatrix> {
        let first = parts.first()?;
        let (n, last) = (parts.len(), parts.len() - 1);
        let fits = parts.iter().enumerate().all(|(i, p)| {
            p.layout == first.layout
                && p.cols == first.cols
                && (i == last || p.rows.is_multiple_of(PANEL))
        });
        if !fits || n == 0 {
            return None;
        }
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Some(PackedMatrix {
            layout: first.layout,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            data,
            panel_bytes: first.panel_bytes,
        })
    }

    /// Row `row` dequantized to f32 (embeddings are looked up this way).
    pub fn row_f32(&self, row: usize, out: &mut [f32]) {
        let l = &self.layout;
        let (p, r) = (row / PANEL, row % PANEL);
        let panel = self.panel(p);
        for (record, out) in panel
            .chunks_exact(l.record)
            .zip(out.chunks_exact_mut(l.block))
        {
            dequantize_record(l, record, r, out);
        }
    }
}

/// A buffer several workers fill, each its own panels.
#[derive(Clone, Copy)]
struct SharedBytes(*mut u8);
// SAFETY: workers write disjoint panels, and the buffer outlives the pool call.
unsafe impl Send for SharedBytes {}
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    fn at(self, offset: usize) -> *mut u8 {
        // SAFETY: the caller keeps the offset inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// Packs the panel whose first row is `first` (`left` rows of the matrix remain from it).
fn pack_panel(
    l: &Layout,
    bytes: &[u8],
    row_bytes: usize,
    left: usize,
    first: usize,
    panel: &mut [u8],
) {
    let unit = l.format.unit_bytes();
    for (b, record) in panel.chunks_exact_mut(l.record).enumerate() {
        for r in 0..PANEL.min(left) {
            let at = (first + r) * row_bytes + b * unit;
            write_row(l, record, r, &read_block(l.format, &bytes[at..at + unit]));
        }
    }
}

/// Value `k` of row `r` of the 32-value span at `span` (the start of its weights).
#[inline]
pub fn unsigned_value(l: &Layout, span: &[u8], r: usize, k: usize) -> u8 {
    if l.bits() == 8 {
        return span[64 * (k / 4) + 4 * r + k % 4];
    }
    let (at, high) = nibble_at(r, k);
    let mut v = if high { span[at] >> 4 } else { span[at] & 0x0f };
    if l.bits() >= 5 {
        let (m, bit) = mask_at(r, k);
        v |= (bit_of(&span[NIBBLES + m..], bit) as u8) << 4;
        if l.bits() == 6 {
            v |= (bit_of(&span[NIBBLES + MASKS + m..], bit) as u8) << 5;
        }
    }
    v
}

fn bit_of(bytes: &[u8], bit: usize) -> bool {
    (bytes[bit / 8] >> (bit % 8)) & 1 == 1
}

fn half(record: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([record[at], record[at + 1]]).to_f32()
}

/// Row `r` of one record dequantized into `out` (`block` values), exactly as the file's
/// block dequantizes.
pub fn dequantize_record(l: &Layout, record: &[u8], r: usize, out: &mut [f32]) {
    let d = half(record, l.scales + 2 * r);
    let m = l.mins.map_or(0.0, |at| half(record, at + 2 * r));
    for (i, out) in out.chunks_exact_mut(32).enumerate() {
        let span = &record[l.weights + i * l.weights_stride..];
        for (k, o) in out.iter_mut().enumerate() {
            let u = unsigned_value(l, span, r, k);
            *o = match l.format {
                QuantFormat::Q8_0 => d * f32::from(u as i8),
                QuantFormat::Q4_0 | QuantFormat::Q5_0 => d * (i32::from(u) - l.zero) as f32,
                QuantFormat::Q4_1 | QuantFormat::Q5_1 => d * f32::from(u) + m,
                QuantFormat::Q4K | QuantFormat::Q5K => {
                    let sc = record[l.sub_scales.unwrap_or(0) + i * PANEL + r];
                    let mn = record[l.sub_mins.unwrap_or(0) + i * PANEL + r];
                    d * f32::from(u16::from(u) * u16::from(sc)) - m * f32::from(mn)
                }
                QuantFormat::Q6K => {
                    let s = (2 * i + usize::from(k >= 16)) * PANEL + r;
                    let sc = record[l.sub_scales.unwrap_or(0) + s] as i8;
                    d * ((i32::from(u) - 32) * i32::from(sc)) as f32
                }
            };
        }
    }
}

/// Writes row `r` of `source` into its record.
fn write_row(l: &Layout, record: &mut [u8], r: usize, source: &SourceBlock) {
    record[l.scales + 2 * r..l.scales + 2 * r + 2].copy_from_slice(&source.d.to_le_bytes());
    if let Some(at) = l.mins {
        record[at + 2 * r..at + 2 * r + 2].copy_from_slice(&source.m.to_le_bytes());
    }
    if let Some(at) = l.sub_scales {
        let subs = if l.format == QuantFormat::Q6K { 16 } else { 8 };
        for s in 0..subs {
            record[at + s * PANEL + r] = source.sub_scales[s];
        }
    }
    if let Some(at) = l.sub_mins {
        for s in 0..8 {
            record[at + s * PANEL + r] = source.sub_mins[s];
        }
    }
    let bits = l.bits();
    for i in 0..l.block / 32 {
        let span = &mut record[l.weights + i * l.weights_stride..][..l.weights_stride];
        let u = &source.u[32 * i..32 * i + 32];
        if bits == 8 {
            for g in 0..8 {
                span[64 * g + 4 * r..64 * g + 4 * r + 4].copy_from_slice(&u[4 * g..4 * g + 4]);
            }
            continue;
        }
        let (nibbles, masks) = span.split_at_mut(NIBBLES);
        for l in 0..4 {
            let (mut bit4_lo, mut bit4_hi, mut bit5_lo, mut bit5_hi) = (0u64, 0u64, 0u64, 0u64);
            for t in 0..4 {
                let (lo, hi) = (u[4 * l + t], u[16 + 4 * l + t]);
                nibbles[64 * l + 4 * r + t] = (lo & 0x0f) | (hi << 4);
                let bit = 4 * r + t;
                bit4_lo |= u64::from((lo >> 4) & 1) << bit;
                bit4_hi |= u64::from((hi >> 4) & 1) << bit;
                bit5_lo |= u64::from((lo >> 5) & 1) << bit;
                bit5_hi |= u64::from((hi >> 5) & 1) << bit;
            }
            if bits >= 5 {
                or_u64(masks, 16 * l, bit4_lo);
                or_u64(masks, 16 * l + 8, bit4_hi);
            }
            if bits == 6 {
                or_u64(masks, MASKS + 16 * l, bit5_lo);
                or_u64(masks, MASKS + 16 * l + 8, bit5_hi);
            }
        }
    }
}

fn or_u64(bytes: &mut [u8], at: usize, bits: u64) {
    let old = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    bytes[at..at + 8].copy_from_slice(&(old | bits).to_le_bytes());
}

fn f16_bits(unit: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([unit[at], unit[at + 1]])
}

/// Takes one GGUF block apart (ggml's `block_q4_0`, …, `block_q6_K` layouts).
fn read_block(format: QuantFormat, unit: &[u8]) -> SourceBlock {
    let mut s = SourceBlock {
        u: [0; 256],
        d: f16_bits(unit, 0),
        m: 0,
        sub_scales: [0; 16],
        sub_mins: [0; 8],
    };
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
            let qs = if format == QuantFormat::Q4_0 {
                &unit[2..18]
            } else {
                &unit[4..20]
            };
            if format == QuantFormat::Q4_1 {
                s.m = f16_bits(unit, 2);
            }
            for j in 0..16 {
                s.u[j] = qs[j] & 0x0f;
                s.u[j + 16] = qs[j] >> 4;
            }
        }
        QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
            let (qh_at, qs_at) = if format == QuantFormat::Q5_0 {
                (2, 6)
            } else {
                (4, 8)
            };
            if format == QuantFormat::Q5_1 {
                s.m = f16_bits(unit, 2);
            }
            let qh = u32::from_le_bytes([
                unit[qh_at],
                unit[qh_at + 1],
                unit[qh_at + 2],
                unit[qh_at + 3],
            ]);
            let qs = &unit[qs_at..qs_at + 16];
            for j in 0..16 {
                s.u[j] = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
                s.u[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            }
        }
        QuantFormat::Q8_0 => s.u[..32].copy_from_slice(&unit[2..34]),
        QuantFormat::Q4K | QuantFormat::Q5K => {
            s.m = f16_bits(unit, 2);
            let packed = &unit[4..16];
            let (qh, qs) = if format == QuantFormat::Q5K {
                (Some(&unit[16..48]), &unit[48..176])
            } else {
                (None, &unit[16..144])
            };
            for sub in 0..8 {
                (s.sub_scales[sub], s.sub_mins[sub]) = scale_min_k4(sub, packed);
            }
            for group in 0..4 {
                let q = &qs[group * 32..group * 32 + 32];
                for l in 0..32 {
                    let lo = qh.map_or(0, |h| ((h[l] >> (2 * group)) & 1) << 4);
                    let hi = qh.map_or(0, |h| ((h[l] >> (2 * group + 1)) & 1) << 4);
                    s.u[group * 64 + l] = (q[l] & 0x0f) | lo;
                    s.u[group * 64 + 32 + l] = (q[l] >> 4) | hi;
                }
            }
        }
        QuantFormat::Q6K => {
            let (ql, qh, sc) = (&unit[0..128], &unit[128..192], &unit[192..208]);
            s.d = f16_bits(unit, 208);
            s.sub_scales.copy_from_slice(sc);
            for half in 0..2 {
                let (ql, qh, u) = (&ql[64 * half..], &qh[32 * half..], &mut s.u[128 * half..]);
                for l in 0..32 {
                    u[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                    u[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                    u[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    u[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
    }
    s
}

/// Random GGUF blocks of `format` for `rows × cols` weights, for tests and benchmarks:
/// random bytes make valid blocks of every format (any bit pattern is a value), except that
/// f16 scales must be finite, so they are set to small ones.
pub fn random_blocks(format: QuantFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let units = rows * cols / format.unit_len();
    let mut bytes: Vec<u8> = (0..units * format.unit_bytes())
        .map(|_| next() as u8)
        .collect();
    let scale_at: &[usize] = match format {
        QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4K | QuantFormat::Q5K => &[0, 2],
        QuantFormat::Q6K => &[208],
        _ => &[0],
    };
    for unit in bytes.chunks_exact_mut(format.unit_bytes()) {
        for &at in scale_at {
            let v = f16::from_f32((next() % 1000) as f32 / 65536.0 - 0.005);
            unit[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_weight_dequantizes_as_from_the_file() {
        use QuantFormat::*;
        for format in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            for rows in [1, 16, 37] {
                let cols = 512;
                let bytes = random_blocks(format, rows, cols, 7 + rows as u64);
                let packed = PackedMatrix::pack(format, rows, cols, &bytes).unwrap();
                let row_bytes = cols / format.unit_len() * format.unit_bytes();
                let mut expected = vec![0f32; cols];
                let mut got = vec![0f32; cols];
                for r in 0..rows {
                    for (unit, out) in bytes[r * row_bytes..(r + 1) * row_bytes]
                        .chunks_exact(format.unit_bytes())
                        .zip(expected.chunks_exact_mut(format.unit_len()))
                    {
                        format.dequantize_unit(unit, out);
                    }
                    packed.row_f32(r, &mut got);
                    for (c, (e, g)) in expected.iter().zip(&got).enumerate() {
                        assert_eq!(
                            e.to_bits(),
                            g.to_bits(),
                            "{format:?} row {r} col {c}: {e} vs {g}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stacking_needs_whole_panels_before_the_last_part() {
        let a = PackedMatrix::pack(
            QuantFormat::Q4_0,
            16,
            64,
            &random_blocks(QuantFormat::Q4_0, 16, 64, 1),
        )
        .unwrap();
        let b = PackedMatrix::pack(
            QuantFormat::Q4_0,
            5,
            64,
            &random_blocks(QuantFormat::Q4_0, 5, 64, 2),
        )
        .unwrap();
        let s = PackedMatrix::stack(&[&a, &b]).unwrap();
        assert_eq!(s.rows, 21);
        assert!(PackedMatrix::stack(&[&b, &a]).is_none());
        let mut x = vec![0f32; 64];
        let mut y = vec![0f32; 64];
        s.row_f32(17, &mut x);
        b.row_f32(1, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(PackedMatrix::pack(QuantFormat::Q4_0, 2, 48, &[0; 54]).is_err());
        assert!(PackedMatrix::pack(QuantFormat::Q4_0, 2, 64, &[0; 71]).is_err());
    }
}
