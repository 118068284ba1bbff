//! Activation rows as the matmul kernels take them: f32, and quantized to 16-bit integers.
//!
//! Integer dot products are what make quantized matmuls fast on a CPU (llama.cpp rounds
//! activations to 8 bits for them). Eight bits are too coarse for small models: on the
//! default model they change the greedy answer to the France question. Sixteen bits keep
//! the activations within 1/32766 of each group's largest value — the greedy tokens match
//! the f32 path's — and the integer sums stay exact, so a row's result never depends on
//! the order in which a kernel adds it up. Each row is quantized on its own: a row comes
//! out the same whatever else is in the batch.

use std::sync::OnceLock;

use super::formats::BLOCK;
use super::int8::Int8Rows;

/// The largest quantized magnitude. Below i16's range so that the kernels' 32-bit lane
/// sums cannot overflow within one unit (see `formats`): 32 products of at most
/// 4096 · 16383 each stay below 2³¹.
pub const XMAX: f32 = 16383.0;

/// Rows of activations quantized with one scale per `group` values.
pub struct QuantizedRows {
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    /// rows × cols.
    pub values: Vec<i16>,
    /// rows × cols/group: the value of one integer step.
    pub scales: Vec<f32>,
    /// rows × cols/32: the sum of the integers of each 32 values (for formats with a
    /// minimum).
    pub sums: Vec<i32>,
    /// With 256-value groups: the same sums sub-block-major within each row
    /// (`[s · groups + g]`), as the K-quant kernels read them.
    pub sums_by_sub: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes `x` (rows × cols, row-major). `group` divides `cols` and is a multiple
    /// of 32.
    pub fn quantize(x: &[f32], rows: usize, cols: usize, group: usize) -> Self {
        debug_assert_eq!(x.len(), rows * cols);
        debug_assert!(group.is_multiple_of(BLOCK) && cols.is_multiple_of(group));
        let mut values = vec![0i16; rows * cols];
        let mut scales = vec![0f32; rows * cols / group];
        for ((xs, qs), ds) in x
            .chunks_exact(group)
            .zip(values.chunks_exact_mut(group))
            .zip(scales.iter_mut())
        {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 || !amax.is_finite() {
                // Zeros stay zeros; a non-finite row is left as zeros here and caught by
                // the model's finiteness check on its output.
                *ds = if amax.is_finite() { 0.0 } else { f32::NAN };
                continue;
            }
            let inverse = XMAX / amax;
            *ds = amax / XMAX;
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = (v * inverse).round() as i16;
            }
        }
        let sums: Vec<i32> = values
            .chunks_exact(BLOCK)
            .map(|b| b.iter().map(|&v| i32::from(v)).sum())
            .collect();
        let mut sums_by_sub = Vec::new();
        if group == 8 * BLOCK {
            let groups = cols / group;
            sums_by_sub = vec![0; sums.len()];
            for (row, out) in sums
                .chunks_exact(cols / BLOCK)
                .zip(sums_by_sub.chunks_exact_mut(cols / BLOCK))
            {
                for (i, &v) in row.iter().enumerate() {
                    out[(i % 8) * groups + i / 8] = v;
                }
            }
        }
        QuantizedRows {
            rows,
            cols,
            group,
            values,
            scales,
            sums,
            sums_by_sub,
        }
    }

    pub fn row(&self, j: usize) -> &[i16] {
        &self.values[j * self.cols..(j + 1) * self.cols]
    }

    pub fn row_scales(&self, j: usize) -> &[f32] {
        let n = self.cols / self.group;
        &self.scales[j * n..(j + 1) * n]
    }

    pub fn row_sums(&self, j: usize) -> &[i32] {
        let n = self.cols / BLOCK;
        &self.sums[j * n..(j + 1) * n]
    }

    /// Row `j`'s sums sub-block-major (256-value groups only).
    pub fn row_sums_by_sub(&self, j: usize) -> &[i32] {
        let n = self.cols / BLOCK;
        &self.sums_by_sub[j * n..(j + 1) * n]
    }
}

/// The input of one or more matmuls: f32 rows, with their 16-bit forms made on first use
/// (q, k and v of a layer share one input, and may differ in format).
pub struct Activations<'a> {
    pub values: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    by_block: OnceLock<QuantizedRows>,
    by_super: OnceLock<QuantizedRows>,
    int8_by_block: OnceLock<Int8Rows>,
    int8_by_super: OnceLock<Int8Rows>,
}

impl<'a> Activations<'a> {
    pub fn new(values: &'a [f32], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        Activations {
            values,
            rows,
            cols,
            by_block: OnceLock::new(),
            by_super: OnceLock::new(),
            int8_by_block: OnceLock::new(),
            int8_by_super: OnceLock::new(),
        }
    }

    /// The rows quantized with one scale per `group` (32 or 256) values.
    pub fn quantized(&self, group: usize) -> &QuantizedRows {
        let slot = if group == BLOCK {
            &self.by_block
        } else {
            &self.by_super
        };
        slot.get_or_init(|| QuantizedRows::quantize(self.values, self.rows, self.cols, group))
    }

    /// The rows rounded to 8 bits with one step per `group` (32 or 256) values.
    pub fn int8(&self, group: usize) -> &Int8Rows {
        let slot = if group == BLOCK {
            &self.int8_by_block
        } else {
            &self.int8_by_super
        };
        slot.get_or_init(|| Int8Rows::quantize(self.values, self.rows, self.cols, group))
    }

    pub fn row(&self, j: usize) -> &[f32] {
        &self.values[j * self.cols..(j + 1) * self.cols]
    }
}
