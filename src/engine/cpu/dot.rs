//! f32 dot products of one weight row (dense, or dequantized for the f32 path) with a few
//! activation rows, per ISA. Each takes up to [`TILE`] activation rows at once so that the
//! weight row is loaded once for all of them; the sum for one activation row is computed
//! by exactly the same instructions whatever else is in the tile, so batching never
//! changes a result. (The integer path is in `int_dot`.)

use super::isa::Isa;

/// Activation rows a tile takes at once.
pub const TILE: usize = 4;

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
