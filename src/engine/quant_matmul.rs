//! Quantized weights times f32 activations on the CPU, dequantizing on the fly.
//!
//! candle's CPU kernels quantize the activations to 8 bits before every quantized matmul
//! (as llama.cpp does). On a model as small as SmolLM2-135M that rounding is enough to
//! change greedy answers (to "What is the capital of France?" it answers "L'Étoile, la
//! Marseillaise…" instead of "The capital of France is Paris.", which the unquantized
//! activations give), and it makes CPU results drift from the GPU's, whose matrix-vector
//! kernels keep activations in f32. These kernels keep the activations exact: only the
//! weights are quantized. Decoding (one row of activations) goes through a hand-written
//! AVX2 kernel where the CPU has it; prompts (many rows) dequantize the weight once and
//! use candle's f32 matmul.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::f16;

/// The block formats these kernels read (32 weights per block, as in GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// f16 scale, 16 bytes of 4-bit values: w = d·(q − 8).
    Q4_0,
    /// f16 scale, f16 minimum, 16 bytes of 4-bit values: w = d·q + m.
    Q4_1,
    /// f16 scale, 32 signed bytes: w = d·q.
    Q8_0,
}

const BLOCK: usize = 32;

impl BlockFormat {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            _ => None,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q8_0 => 34,
        }
    }
}

/// A quantized weight matrix of `rows` × `cols` (`y = x · Wᵀ`), its blocks as in the file.
pub struct QuantMatrix {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// At this many activation rows and more, dequantizing the weight once and running a
/// dense matmul beats the row-by-row kernel.
const DENSE_FROM_ROWS: usize = 8;

impl QuantMatrix {
    /// Takes a 2-D quantized tensor of a supported format (None otherwise).
    pub fn from_qtensor(tensor: &QTensor) -> candle_core::Result<Option<Self>> {
        let Some(format) = BlockFormat::of(tensor.dtype()) else {
            return Ok(None);
        };
        let (rows, cols) = tensor.shape().dims2()?;
        if cols % BLOCK != 0 {
            return Ok(None);
        }
        let data = tensor.data()?.into_owned();
        if data.len() != rows * cols / BLOCK * format.block_bytes() {
            candle_core::bail!(
                "quantized tensor has {} bytes, not the {} its shape needs",
                data.len(),
                rows * cols / BLOCK * format.block_bytes()
            );
        }
        Ok(Some(QuantMatrix {
            format,
            rows,
            cols,
            data,
        }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Row `r` as f32 values.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (block, values) in self
            .row(r)
            .chunks_exact(self.format.block_bytes())
            .zip(out.chunks_exact_mut(BLOCK))
        {
            dequantize_block(self.format, block, values);
        }
    }

    /// The whole matrix as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let out: Vec<AtomicU32> = (0..self.rows * self.cols)
            .map(|_| AtomicU32::new(0))
            .collect();
        in_parallel(self.rows, |rows| {
            let mut row = vec![0f32; self.cols];
            for r in rows {
                self.dequantize_row(r, &mut row);
                for (slot, value) in out[r * self.cols..(r + 1) * self.cols].iter().zip(&row) {
                    slot.store(value.to_bits(), Ordering::Relaxed);
                }
            }
        });
        out.into_iter()
            .map(|v| f32::from_bits(v.into_inner()))
            .collect()
    }

    /// `x · Wᵀ` for `m` rows of activations (`x` is m × cols, row-major).
    pub fn matmul(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        if x.len() != m * self.cols {
            candle_core::bail!(
                "activations of {} values do not make {m} rows of {}",
                x.len(),
                self.cols
            );
        }
        if m >= DENSE_FROM_ROWS {
            let w = Tensor::from_vec(
                self.dequantize(),
                (self.rows, self.cols),
                &candle_core::Device::Cpu,
            )?;
            let x = Tensor::from_slice(x, (m, self.cols), &candle_core::Device::Cpu)?;
            return x.matmul(&w.t()?)?.flatten_all()?.to_vec1();
        }
        // Sums of each 32-value block of each activation row (Q4 formats need them).
        let block_sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        let blocks_per_row = self.cols / BLOCK;
        let out: Vec<AtomicU32> = (0..m * self.rows).map(|_| AtomicU32::new(0)).collect();
        in_parallel(self.rows, |rows| {
            for r in rows {
                let row = self.row(r);
                for j in 0..m {
                    let xs = &x[j * self.cols..(j + 1) * self.cols];
                    let sums = &block_sums[j * blocks_per_row..(j + 1) * blocks_per_row];
                    out[j * self.rows + r]
                        .store(dot(self.format, row, xs, sums).to_bits(), Ordering::Relaxed);
                }
            }
        });
        Ok(out
            .into_iter()
            .map(|v| f32::from_bits(v.into_inner()))
            .collect())
    }
}

/// Runs `work` over `0..items` on candle's CPU worker pool (the one its own kernels use:
/// a second pool would fight it for the cores), each item exactly once.
fn in_parallel(items: usize, work: impl Fn(std::ops::Range<usize>) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(items, work);
}

fn scale(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

fn dequantize_block(format: BlockFormat, block: &[u8], out: &mut [f32]) {
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let d = scale(block, 0);
            let (offset, qs) = match format {
                BlockFormat::Q4_0 => (-8.0 * d, &block[2..18]),
                _ => (scale(block, 2), &block[4..20]),
            };
            for (j, &byte) in qs.iter().enumerate() {
                out[j] = f32::from(byte & 0x0f) * d + offset;
                out[j + 16] = f32::from(byte >> 4) * d + offset;
            }
        }
        BlockFormat::Q8_0 => {
            let d = scale(block, 0);
            for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                *o = f32::from(q as i8) * d;
            }
        }
    }
}

/// One weight row (all its blocks) · one activation row.
fn dot(format: BlockFormat, row: &[u8], x: &[f32], block_sums: &[f32]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: the cfg guarantees AVX2 and FMA are enabled for this build.
        unsafe { avx2::dot(format, row, x, block_sums) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        portable_dot(format, row, x, block_sums)
    }
}

/// The same sum, written plainly (the reference for the AVX2 kernel, and the kernel on
/// other CPUs).
pub fn portable_dot(format: BlockFormat, row: &[u8], x: &[f32], block_sums: &[f32]) -> f32 {
    let size = format.block_bytes();
    let mut total = 0f32;
    for (b, block) in row.chunks_exact(size).enumerate() {
        let xs = &x[b * BLOCK..(b + 1) * BLOCK];
        let d = scale(block, 0);
        let mut lanes = [0f32; 8];
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let qs = if format == BlockFormat::Q4_0 {
                    &block[2..18]
                } else {
                    &block[4..20]
                };
                for (j, &byte) in qs.iter().enumerate() {
                    lanes[j % 8] +=
                        f32::from(byte & 0x0f) * xs[j] + f32::from(byte >> 4) * xs[j + 16];
                }
                let offset = if format == BlockFormat::Q4_0 {
                    -8.0 * d
                } else {
                    scale(block, 2)
                };
                total += d * lanes.iter().sum::<f32>() + offset * block_sums[b];
            }
            BlockFormat::Q8_0 => {
                for (j, &q) in block[2..34].iter().enumerate() {
                    lanes[j % 8] += f32::from(q as i8) * xs[j];
                }
                total += d * lanes.iter().sum::<f32>();
            }
        }
    }
    total
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, BlockFormat, scale};

    /// Sum of the 8 lanes.
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// 8 unsigned bytes → 8 floats.
    #[inline]
    unsafe fn u8x8(bytes: __m128i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)) }
    }

    /// 8 signed bytes → 8 floats.
    #[inline]
    unsafe fn i8x8(bytes: __m128i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)) }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA (guaranteed by the module's cfg); `row` holds
    /// whole blocks covering `x`.
    pub unsafe fn dot(format: BlockFormat, row: &[u8], x: &[f32], block_sums: &[f32]) -> f32 {
        unsafe {
            let size = format.block_bytes();
            let mut acc = _mm256_setzero_ps();
            let mut offsets = 0f32;
            for (b, block) in row.chunks_exact(size).enumerate() {
                let xp = x.as_ptr().add(b * BLOCK);
                let x0 = _mm256_loadu_ps(xp);
                let x1 = _mm256_loadu_ps(xp.add(8));
                let x2 = _mm256_loadu_ps(xp.add(16));
                let x3 = _mm256_loadu_ps(xp.add(24));
                let d = scale(block, 0);
                let sum = match format {
                    BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                        let qs_at = if format == BlockFormat::Q4_0 { 2 } else { 4 };
                        let packed = _mm_loadu_si128(block.as_ptr().add(qs_at) as *const __m128i);
                        let mask = _mm_set1_epi8(0x0f);
                        let low = _mm_and_si128(packed, mask);
                        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
                        // low holds values 0..16, high values 16..32.
                        let mut s = _mm256_mul_ps(u8x8(low), x0);
                        s = _mm256_fmadd_ps(u8x8(_mm_srli_si128(low, 8)), x1, s);
                        s = _mm256_fmadd_ps(u8x8(high), x2, s);
                        s = _mm256_fmadd_ps(u8x8(_mm_srli_si128(high, 8)), x3, s);
                        offsets += if format == BlockFormat::Q4_0 {
                            -8.0 * d
                        } else {
                            scale(block, 2)
                        } * block_sums[b];
                        s
                    }
                    BlockFormat::Q8_0 => {
                        let q = block.as_ptr().add(2);
                        let lo = _mm_loadu_si128(q as *const __m128i);
                        let hi = _mm_loadu_si128(q.add(16) as *const __m128i);
                        let mut s = _mm256_mul_ps(i8x8(lo), x0);
                        s = _mm256_fmadd_ps(i8x8(_mm_srli_si128(lo, 8)), x1, s);
                        s = _mm256_fmadd_ps(i8x8(hi), x2, s);
                        _mm256_fmadd_ps(i8x8(_mm_srli_si128(hi, 8)), x3, s)
                    }
                };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), sum, acc);
            }
            hsum(acc) + offsets
        }
    }
}

/// The matmul as a candle op, so that it sits in the tensor graph like any other.
struct QuantMatmulOp(Arc<QuantMatrix>);

impl CustomOp1 for QuantMatmulOp {
    fn name(&self) -> &'static str {
        "exo-quant-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("exo-quant-matmul takes f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("exo-quant-matmul takes contiguous activations");
        };
        let dims = layout.shape().dims();
        let cols = *dims.last().unwrap_or(&0);
        if cols != self.0.cols {
            candle_core::bail!(
                "activations of width {cols} do not fit a {}×{} weight",
                self.0.rows,
                self.0.cols
            );
        }
        let m = layout.shape().elem_count() / cols.max(1);
        let out = self.0.matmul(&values[start..end], m)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap_or(&mut 0) = self.0.rows;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

impl QuantMatrix {
    /// `x · Wᵀ` for a CPU tensor `x` of shape (..., cols), in f32.
    pub fn forward(self: &Arc<Self>, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dtype() != DType::F32 {
            candle_core::bail!(
                "exo-quant-matmul takes f32 activations, not {:?}",
                x.dtype()
            );
        }
        x.contiguous()?
            .apply_op1_no_bwd(&QuantMatmulOp(self.clone()))
    }

    /// Rows `ids` of the matrix (an embedding lookup), shape ids.dims + [cols].
    pub fn embedding(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let ids_list = ids.flatten_all()?.to_vec1::<u32>()?;
        let mut out = vec![0f32; ids_list.len() * self.cols];
        for (&id, row) in ids_list.iter().zip(out.chunks_exact_mut(self.cols)) {
            if id as usize >= self.rows {
                candle_core::bail!(
                    "token id {id} is outside the {} rows of the embedding",
                    self.rows
                );
            }
            self.dequantize_row(id as usize, row);
        }
        let mut dims = ids.dims().to_vec();
        dims.push(self.cols);
        Tensor::from_vec(out, dims, ids.device())
    }
}
