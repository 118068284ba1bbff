//! Activation rows rounded to 8-bit integers, as the packed kernels take them.
//!
//! Each group of values (32 for the classic formats, 256 for the K-quants: the span of one
//! weight scale) gets one f32 step `d = amax / 127`, and every value becomes
//! `round(x · 127 / amax)` in −127..=127 (ties to even, as the SIMD conversions round).
//! The sums of the integers per 32 and per 16 values are kept beside them: the kernels
//! use them for the weights' zero points and minimums. Each row is rounded on its own, so
//! a row's integers never depend on the rows beside it.
//!
//! This is llama.cpp's choice (its Q8_0 and Q8_K), not a new one: activations at 8 bits
//! let one `vpdpbusd` multiply 64 weight–activation pairs.

use crate::engine::cpu::isa::Isa;

/// The largest rounded magnitude.
const QMAX: f32 = 127.0;

/// Rows of activations rounded to 8 bits, one step per `group` values.
#[derive(Debug, Clone, Default)]
pub struct Int8Rows {
    pub rows: usize,
    pub cols: usize,
    /// 32 or 256.
    pub group: usize,
    /// rows × cols integers.
    pub q: Vec<i8>,
    /// rows × cols/group: the value of one integer step.
    pub d: Vec<f32>,
    /// rows × cols/32: the sum of each 32 integers.
    pub sum32: Vec<i32>,
    /// rows × cols/16: the sum of each 16 integers (256-value groups only: Q6_K's 16-value
    /// sub-blocks need them).
    pub sum16: Vec<i32>,
    /// rows × cols/32 (32-value groups only): `d · sum32`, the factor of a block's minimum.
    pub dsum: Vec<f32>,
}

impl Int8Rows {
    /// Rounds `x` (rows × cols, row-major). `group` is 32 or 256 and divides `cols`.
    pub fn quantize(x: &[f32], rows: usize, cols: usize, group: usize) -> Self {
        Self::quantize_on(Isa::best(), x, rows, cols, group)
    }

    /// [`Self::quantize`] on a given ISA path (every path gives the same bits).
    pub fn quantize_on(isa: Isa, x: &[f32], rows: usize, cols: usize, group: usize) -> Self {
        debug_assert!(group == 32 || group == 256);
        debug_assert!(cols.is_multiple_of(group) && x.len() == rows * cols);
        let by16 = if group == 256 { rows * cols / 16 } else { 0 };
        let dsum = if group == 32 { rows * cols / 32 } else { 0 };
        let mut out = Int8Rows {
            rows,
            cols,
            group,
            q: vec![0; rows * cols],
            d: vec![0.0; rows * cols / group],
            sum32: vec![0; rows * cols / 32],
            sum16: vec![0; by16],
            dsum: vec![0.0; dsum],
        };
        let parts = RowParts::of(&mut out);
        let run = |range: std::ops::Range<usize>| {
            for j in range {
                // SAFETY: row j's parts belong to this call alone (rows are disjoint).
                unsafe { parts.round_row(isa, &x[j * cols..(j + 1) * cols], j, cols, group) };
            }
        };
        if rows * cols >= PARALLEL_FROM && rows > 1 {
            crate::engine::cpu::pool::pool().chunked(rows, &run);
        } else {
            run(0..rows);
        }
        out
    }

    /// Groups per row.
    pub fn groups(&self) -> usize {
        self.cols / self.group
    }

    pub fn row(&self, j: usize) -> &[i8] {
        &self.q[j * self.cols..(j + 1) * self.cols]
    }

    pub fn row_d(&self, j: usize) -> &[f32] {
        let n = self.groups();
        &self.d[j * n..(j + 1) * n]
    }

    pub fn row_sum32(&self, j: usize) -> &[i32] {
        let n = self.cols / 32;
        &self.sum32[j * n..(j + 1) * n]
    }

    pub fn row_sum16(&self, j: usize) -> &[i32] {
        let n = self.cols / 16;
        &self.sum16[j * n..(j + 1) * n]
    }

    pub fn row_dsum(&self, j: usize) -> &[f32] {
        let n = self.cols / 32;
        &self.dsum[j * n..(j + 1) * n]
    }
}

/// Below this many values, rows are rounded on the calling thread.
const PARALLEL_FROM: usize = 1 << 15;

/// Pointers to the buffers of an [`Int8Rows`], for workers that each fill rows of their own.
#[derive(Clone, Copy)]
struct RowParts {
    q: *mut i8,
    d: *mut f32,
    sum32: *mut i32,
    sum16: *mut i32,
    dsum: *mut f32,
}
// SAFETY: each worker writes the parts of its own rows only, and the buffers outlive the
// pool call.
unsafe impl Send for RowParts {}
unsafe impl Sync for RowParts {}

impl RowParts {
    fn of(rows: &mut Int8Rows) -> Self {
        RowParts {
            q: rows.q.as_mut_ptr(),
            d: rows.d.as_mut_ptr(),
            sum32: rows.sum32.as_mut_ptr(),
            sum16: rows.sum16.as_mut_ptr(),
            dsum: rows.dsum.as_mut_ptr(),
        }
    }

    /// Rounds row `j` (`xs`) into its parts.
    ///
    /// # Safety
    /// Row j exists in every buffer, and no one else writes it meanwhile.
    unsafe fn round_row(self, isa: Isa, xs: &[f32], j: usize, cols: usize, group: usize) {
        // SAFETY: row j's ranges of each buffer (the caller's contract).
        let (q, d, sum32) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.q.add(j * cols), cols),
                std::slice::from_raw_parts_mut(self.d.add(j * cols / group), cols / group),
                std::slice::from_raw_parts_mut(self.sum32.add(j * cols / 32), cols / 32),
            )
        };
        for ((xs, qs), d) in xs
            .chunks_exact(group)
            .zip(q.chunks_exact_mut(group))
            .zip(d.iter_mut())
        {
            *d = round_group(isa, xs, qs);
        }
        for (s, qs) in q.chunks_exact(32).enumerate() {
            let (a, b) = qs.split_at(16);
            let (a, b) = (sum(a), sum(b));
            sum32[s] = a + b;
            // SAFETY: as above, for the buffers this group size has.
            unsafe {
                if group == 256 {
                    *self.sum16.add(j * cols / 16 + 2 * s) = a;
                    *self.sum16.add(j * cols / 16 + 2 * s + 1) = b;
                } else {
                    *self.dsum.add(j * cols / 32 + s) = d[s] * (a + b) as f32;
                }
            }
        }
    }
}

fn sum(qs: &[i8]) -> i32 {
    qs.iter().map(|&v| i32::from(v)).sum()
}

/// Rounds one group into `qs`; returns its step. A group of zeros has step 0; a group
/// holding NaN or an infinity gets a NaN step (its integers are zeros), so the NaN reaches
/// the output, where the model's finiteness check catches it.
fn round_group(isa: Isa, xs: &[f32], qs: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: chosen only on CPUs with AVX-512 F/BW.
        if let Some(d) = unsafe { simd::round_group(xs, qs) } {
            return d;
        }
    }
    let _ = isa;
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() || xs.iter().any(|v| v.is_nan()) {
        qs.fill(0);
        return if amax == 0.0 && xs.iter().all(|v| !v.is_nan()) {
            0.0
        } else {
            f32::NAN
        };
    }
    let inverse = QMAX / amax;
    for (q, &v) in qs.iter_mut().zip(xs) {
        // |v · inverse| ≤ 127 up to one rounding, which rounds to 127 at most.
        *q = (v * inverse).round_ties_even() as i8;
    }
    amax / QMAX
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::QMAX;

    /// The group's step and integers, as the plain path computes them (the conversion
    /// rounds to nearest, ties to even); None for a group the plain path must take
    /// (zeros, NaN, infinities).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW; the group is a multiple of 16 values.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn round_group(xs: &[f32], qs: &mut [i8]) -> Option<f32> {
        let n = xs.len().min(qs.len());
        let mut amax = _mm512_setzero_ps();
        let mut odd: __mmask16 = 0;
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n.
            let v = unsafe { _mm512_loadu_ps(xs.as_ptr().add(i)) };
            odd |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
            i += 16;
        }
        let amax = _mm512_reduce_max_ps(amax);
        if odd != 0 || amax == 0.0 || !amax.is_finite() || i != n {
            return None;
        }
        let inverse = _mm512_set1_ps(QMAX / amax);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n for both slices.
            unsafe {
                let v = _mm512_mul_ps(_mm512_loadu_ps(xs.as_ptr().add(i)), inverse);
                let q = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));
                _mm_storeu_si128(qs.as_mut_ptr().add(i) as *mut __m128i, q);
            }
            i += 16;
        }
        Some(amax / QMAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_stays_within_half_a_step_and_sums_are_exact() {
        let x: Vec<f32> = (0..2 * 512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        for group in [32, 256] {
            let q = Int8Rows::quantize(&x, 2, 512, group);
            for j in 0..2 {
                let xs = &x[j * 512..(j + 1) * 512];
                for (i, (&v, &qi)) in xs.iter().zip(q.row(j)).enumerate() {
                    let d = q.row_d(j)[i / group];
                    assert!(
                        (v - d * f32::from(qi)).abs() <= d * 0.5 + 1e-7,
                        "{v} {qi} {d}"
                    );
                }
                for (s, &total) in q.row_sum32(j).iter().enumerate() {
                    let expected: i32 = q.row(j)[s * 32..s * 32 + 32]
                        .iter()
                        .map(|&v| i32::from(v))
                        .sum();
                    assert_eq!(total, expected);
                }
            }
        }
    }

    #[test]
    fn every_path_rounds_to_the_same_bits() {
        // 64 rows: enough values to be rounded on the workers.
        let x: Vec<f32> = (0..64 * 768)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.5) * if i % 53 == 0 { 0.37 } else { 0.0021 })
            .collect();
        for group in [32, 256] {
            let plain = Int8Rows::quantize_on(Isa::Portable, &x[..768], 1, 768, group);
            for isa in Isa::available() {
                let q = Int8Rows::quantize_on(isa, &x, 64, 768, group);
                assert_eq!(q.row(0), plain.row(0), "{isa:?}");
                let plain = Int8Rows::quantize_on(Isa::Portable, &x, 64, 768, group);
                assert_eq!(q.q, plain.q, "{isa:?}");
                assert_eq!(q.sum32, plain.sum32);
                assert_eq!(q.sum16, plain.sum16);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&q.d), bits(&plain.d));
                assert_eq!(bits(&q.dsum), bits(&plain.dsum));
            }
        }
    }

    #[test]
    fn zeros_and_non_finite_groups() {
        let mut x = vec![0f32; 64];
        x[40] = f32::NAN;
        let q = Int8Rows::quantize(&x, 1, 64, 32);
        assert_eq!(q.d[0], 0.0);
        assert!(q.d[1].is_nan());
        assert!(q.q.iter().all(|&v| v == 0));
    }

    #[test]
    fn the_largest_value_is_127() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 31.0).collect();
        let q = Int8Rows::quantize(&x, 1, 32, 32);
        assert_eq!(q.q[0], -127);
        assert_eq!(q.q[31], 0);
    }
}
