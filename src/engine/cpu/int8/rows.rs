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
        let mut out = Int8Rows::default();
        out.requantize(x, rows, cols, group);
        out
    }

    /// [`Self::quantize`] into this value's buffers (reused across calls).
    pub fn requantize(&mut self, x: &[f32], rows: usize, cols: usize, group: usize) {
        debug_assert!(group == 32 || group == 256);
        debug_assert!(cols.is_multiple_of(group) && x.len() == rows * cols);
        self.rows = rows;
        self.cols = cols;
        self.group = group;
        self.q.resize(rows * cols, 0);
        self.d.resize(rows * cols / group, 0.0);
        self.sum32.resize(rows * cols / 32, 0);
        let by16 = if group == 256 { rows * cols / 16 } else { 0 };
        self.sum16.resize(by16, 0);
        let dsum = if group == 32 { rows * cols / 32 } else { 0 };
        self.dsum.resize(dsum, 0.0);
        for (g, xs) in x.chunks_exact(group).enumerate() {
            let qs = &mut self.q[g * group..(g + 1) * group];
            self.d[g] = round_group(xs, qs);
        }
        for (s, qs) in self.q.chunks_exact(32).enumerate() {
            let (a, b) = qs.split_at(16);
            let (a, b) = (sum(a), sum(b));
            self.sum32[s] = a + b;
            if group == 256 {
                self.sum16[2 * s] = a;
                self.sum16[2 * s + 1] = b;
            } else {
                self.dsum[s] = self.d[s] * (a + b) as f32;
            }
        }
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

fn sum(qs: &[i8]) -> i32 {
    qs.iter().map(|&v| i32::from(v)).sum()
}

/// Rounds one group into `qs`; returns its step. A group of zeros has step 0; a group
/// holding NaN or an infinity gets a NaN step (its integers are zeros), so the NaN reaches
/// the output, where the model's finiteness check catches it.
fn round_group(xs: &[f32], qs: &mut [i8]) -> f32 {
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
