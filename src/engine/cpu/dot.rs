//! Dot products of one decoded weight row with a few activation rows, per ISA.
//!
//! Two kinds: integer (a quantized weight row, decoded to i16 with its unit scales, against
//! 16-bit activations) and f32 (a dense or dequantized weight row against f32 activations).
//! Each takes `C` activation rows at once so that the weight row is loaded once for all of
//! them; the sum for one activation row is computed by exactly the same instructions
//! whatever `C` is and whatever rows sit beside it, so batching never changes a result.

use super::activations::QuantizedRows;
use super::decode::{DecodedRow, MinKind};
use super::formats::BLOCK;
use super::isa::Isa;

/// Activation rows a tile takes at once.
pub const TILE: usize = 4;

/// `out[c] = w · x[j0 + c]` for `c < out.len()` (at most [`TILE`]): integer path.
/// `x` was quantized with `group == w.unit_len`.
pub fn dot_int(isa: Isa, w: &DecodedRow, x: &QuantizedRows, j0: usize, out: &mut [f32]) {
    debug_assert_eq!(x.group, w.unit_len);
    debug_assert!(out.len() <= TILE && j0 + out.len() <= x.rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            // SAFETY: Isa::Avx512Vnni is only chosen when the CPU has these features.
            unsafe { by_shape!(avx512::dot_int, w, x, j0, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: Isa::Avx2 is only chosen when the CPU has AVX2, FMA and F16C.
            unsafe { by_shape!(avx2::dot_int, w, x, j0, out) }
        }
        _ => {
            for (c, o) in out.iter_mut().enumerate() {
                *o = portable_dot_int(w, x, j0 + c);
            }
        }
    }
}

/// Calls `$f::<C, MIN>` for the tile size and the row's kind of minimum, so that each
/// combination is compiled without branches in its inner loop.
macro_rules! by_shape {
    ($($f:ident)::+, $w:expr, $x:expr, $j0:expr, $out:expr) => {{
        let (w, x, j0, out) = ($w, $x, $j0, $out);
        macro_rules! kinds {
            ($c:literal) => {
                match w.kind {
                    MinKind::None => $($f)::+::<$c, 0>(w, x, j0, out),
                    MinKind::Block => $($f)::+::<$c, 1>(w, x, j0, out),
                    MinKind::Sub => $($f)::+::<$c, 2>(w, x, j0, out),
                }
            };
        }
        match out.len() {
            1 => kinds!(1),
            2 => kinds!(2),
            3 => kinds!(3),
            _ => kinds!(4),
        }
    }};
}
use by_shape;

/// `out[c] = w · x[c]`: f32 path; every slice of `x` has `w.len()` values.
pub fn dot_f32(isa: Isa, w: &[f32], x: &[&[f32]], out: &mut [f32]) {
    debug_assert!(out.len() == x.len() && out.len() <= TILE);
    match (isa, out.len()) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, n) => unsafe {
            // SAFETY: as above.
            match n {
                1 => avx512::dot_f32::<1>(w, x, out),
                2 => avx512::dot_f32::<2>(w, x, out),
                3 => avx512::dot_f32::<3>(w, x, out),
                _ => avx512::dot_f32::<4>(w, x, out),
            }
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, n) => unsafe {
            // SAFETY: as above.
            match n {
                1 => avx2::dot_f32::<1>(w, x, out),
                2 => avx2::dot_f32::<2>(w, x, out),
                3 => avx2::dot_f32::<3>(w, x, out),
                _ => avx2::dot_f32::<4>(w, x, out),
            }
        },
        _ => {
            for (o, xs) in out.iter_mut().zip(x) {
                *o = portable_dot_f32(w, xs);
            }
        }
    }
}

/// The minimum's part of unit `u`'s dot product (the same expression on every path).
/// `MIN`: 0 none, 1 per block, 2 per sub-block (see [`MinKind`]).
#[inline(always)]
fn min_part<const MIN: u8>(w: &DecodedRow, u: usize, dx: f32, sums: &[i32]) -> f32 {
    match MIN {
        1 => w.mins[u] * dx * sums[u] as f32,
        2 => {
            let first = u * (w.unit_len / BLOCK);
            let mut total = 0i32;
            for (s, &m) in w.sub_mins[u].iter().enumerate() {
                total += i32::from(m) * sums[first + s];
            }
            -(w.mins[u] * dx * total as f32)
        }
        _ => 0.0,
    }
}

/// The integer path written plainly (the reference for the SIMD paths).
pub fn portable_dot_int(w: &DecodedRow, x: &QuantizedRows, j: usize) -> f32 {
    let xs = x.row(j);
    let scales = x.row_scales(j);
    let sums = x.row_sums(j);
    let n = w.unit_len;
    let mut acc = 0f32;
    let mut mins = 0f32;
    for u in 0..w.scales.len() {
        let range = u * n..(u + 1) * n;
        let isum: i64 = w.w[range.clone()]
            .iter()
            .zip(&xs[range])
            .map(|(&a, &b)| i64::from(a) * i64::from(b))
            .sum();
        acc += w.scales[u] * scales[u] * isum as f32;
        mins += match w.kind {
            MinKind::None => 0.0,
            MinKind::Block => min_part::<1>(w, u, scales[u], sums),
            MinKind::Sub => min_part::<2>(w, u, scales[u], sums),
        };
    }
    acc + mins
}

/// The f32 path written plainly, with eight partial sums (so that it vectorizes).
pub fn portable_dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = w.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            lanes[l] = w[i * 8 + l].mul_add(x[i * 8 + l], lanes[l]);
        }
    }
    let mut total: f32 = lanes.iter().sum();
    for i in chunks * 8..w.len() {
        total = w[i].mul_add(x[i], total);
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{DecodedRow, QuantizedRows, min_part};

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_int<const C: usize, const MIN: u8>(
        w: &DecodedRow,
        x: &QuantizedRows,
        j0: usize,
        out: &mut [f32],
    ) {
        let xs: [&[i16]; C] = std::array::from_fn(|c| x.row(j0 + c));
        let scales: [&[f32]; C] = std::array::from_fn(|c| x.row_scales(j0 + c));
        let sums: [&[i32]; C] = std::array::from_fn(|c| x.row_sums(j0 + c));
        let mut acc = [_mm512_setzero_ps(); C];
        let mut mins = [0f32; C];
        let wp = w.w.as_ptr();
        let n = w.unit_len;
        for u in 0..w.scales.len() {
            let base = u * n;
            let mut isum = [_mm512_setzero_si512(); C];
            let mut k = 0;
            while k < n {
                // SAFETY: `w` and every row of `x` hold whole units.
                unsafe {
                    let wv = _mm512_loadu_si512(wp.add(base + k) as *const __m512i);
                    for c in 0..C {
                        let xv = _mm512_loadu_si512(xs[c].as_ptr().add(base + k) as *const __m512i);
                        isum[c] = _mm512_dpwssd_epi32(isum[c], wv, xv);
                    }
                }
                k += 32;
            }
            let scale = w.scales[u];
            for c in 0..C {
                let dx = scales[c][u];
                acc[c] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(isum[c]),
                    _mm512_set1_ps(scale * dx),
                    acc[c],
                );
                if MIN != 0 {
                    mins[c] += min_part::<MIN>(w, u, dx, sums[c]);
                }
            }
        }
        for c in 0..C {
            out[c] = _mm512_reduce_add_ps(acc[c]) + mins[c];
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_f32<const C: usize>(w: &[f32], x: &[&[f32]], out: &mut [f32]) {
        let n = w.len();
        let mut acc = [_mm512_setzero_ps(); C];
        let mut k = 0;
        while k + 16 <= n {
            // SAFETY: k + 16 <= n and every slice has n values.
            unsafe {
                let wv = _mm512_loadu_ps(w.as_ptr().add(k));
                for c in 0..C {
                    acc[c] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x[c].as_ptr().add(k)), acc[c]);
                }
            }
            k += 16;
        }
        for c in 0..C {
            let mut total = _mm512_reduce_add_ps(acc[c]);
            for i in k..n {
                total = w[i].mul_add(x[c][i], total);
            }
            out[c] = total;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{DecodedRow, QuantizedRows, min_part};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_int<const C: usize, const MIN: u8>(
        w: &DecodedRow,
        x: &QuantizedRows,
        j0: usize,
        out: &mut [f32],
    ) {
        let xs: [&[i16]; C] = std::array::from_fn(|c| x.row(j0 + c));
        let scales: [&[f32]; C] = std::array::from_fn(|c| x.row_scales(j0 + c));
        let sums: [&[i32]; C] = std::array::from_fn(|c| x.row_sums(j0 + c));
        let mut acc = [_mm256_setzero_ps(); C];
        let mut mins = [0f32; C];
        let wp = w.w.as_ptr();
        let n = w.unit_len;
        for u in 0..w.scales.len() {
            let base = u * n;
            let mut isum = [_mm256_setzero_si256(); C];
            let mut k = 0;
            while k < n {
                // SAFETY: `w` and every row of `x` hold whole units.
                unsafe {
                    let wv = _mm256_loadu_si256(wp.add(base + k) as *const __m256i);
                    for c in 0..C {
                        let xv = _mm256_loadu_si256(xs[c].as_ptr().add(base + k) as *const __m256i);
                        isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(wv, xv));
                    }
                }
                k += 16;
            }
            let scale = w.scales[u];
            for c in 0..C {
                let dx = scales[c][u];
                acc[c] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(isum[c]),
                    _mm256_set1_ps(scale * dx),
                    acc[c],
                );
                if MIN != 0 {
                    mins[c] += min_part::<MIN>(w, u, dx, sums[c]);
                }
            }
        }
        for c in 0..C {
            out[c] = hsum(acc[c]) + mins[c];
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32<const C: usize>(w: &[f32], x: &[&[f32]], out: &mut [f32]) {
        let n = w.len();
        let mut acc = [_mm256_setzero_ps(); C];
        let mut k = 0;
        while k + 8 <= n {
            // SAFETY: k + 8 <= n and every slice has n values.
            unsafe {
                let wv = _mm256_loadu_ps(w.as_ptr().add(k));
                for c in 0..C {
                    acc[c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[c].as_ptr().add(k)), acc[c]);
                }
            }
            k += 8;
        }
        for c in 0..C {
            let mut total = hsum(acc[c]);
            for i in k..n {
                total = w[i].mul_add(x[c][i], total);
            }
            out[c] = total;
        }
    }
}
