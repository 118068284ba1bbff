//! The candle backend: candle's tensors and kernels, on CUDA, Metal or the CPU.
//!
//! This is how the engine runs on GPUs. On the CPU it is an independent implementation of
//! the same decoder (`--cpu-matmul candle`), which the tests compare the CPU backend with;
//! it does not promise the CPU backend's row invariance (candle's matmuls block rows
//! together).

use anyhow::{Context, bail};
use candle_core::quantized::{QMatMul, ggml_file::qtensor_from_ggml};
use candle_core::{D, DType, Device, Module, Tensor};

use super::backend::{Backend, SeqRows};
use super::config::{RopeLayout, RopeSpec};
use super::weights::{Encoding, RawTensor};
use crate::engine::cpu::attention::AttentionShape;
use crate::engine::cpu::ops::Activation;

/// Rope positions tabulated on the device.
const MAX_TABLE: usize = 65_536;

pub struct CandleBackend {
    device: Device,
    /// The dtype of activations: f32 for quantized models, f16/bf16 for dense ones on GPUs.
    dtype: DType,
}

impl CandleBackend {
    pub fn new(device: Device, dtype: DType) -> Self {
        CandleBackend { device, dtype }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of activations (and of the KV caches).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// A matrix: candle's quantized matmul, or a dense weight.
pub struct CandleMatrix {
    matmul: QMatMul,
    rows: usize,
    /// The dense weight (rows × cols) when there is one, for embedding lookups and stacking.
    dense: Option<Tensor>,
    /// The raw quantized form, kept for stacking and embedding lookups.
    raw: Option<RawTensor>,
}

/// cos and sin for every tabulated position, (positions, rotary_dim / 2).
pub struct CandleRope {
    cos: Tensor,
    sin: Tensor,
    layout: RopeLayout,
}

/// One layer's keys and values for one sequence: (1, kv_heads, capacity, head_dim) each,
/// grown by doubling.
#[derive(Default)]
pub struct CandleKv {
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

impl Backend for CandleBackend {
    type Act = Tensor;
    type Matrix = CandleMatrix;
    type Vector = Tensor;
    type Rope = CandleRope;
    type Kv = CandleKv;

    fn describe(&self) -> String {
        super::device::device_name(&self.device)
    }

    fn matrix(&self, tensor: RawTensor) -> anyhow::Result<CandleMatrix> {
        let rows = *tensor.shape.first().context("a matrix without rows")?;
        match tensor.encoding {
            Encoding::Ggml(dtype) => {
                let q = qtensor_from_ggml(dtype, &tensor.bytes, tensor.shape.clone(), &self.device)
                    .with_context(|| format!("tensor {}", tensor.name))?;
                Ok(CandleMatrix {
                    matmul: QMatMul::from_qtensor(q)?,
                    rows,
                    dense: None,
                    raw: Some(tensor),
                })
            }
            Encoding::Dense(dtype) => {
                let t = Tensor::from_raw_buffer(&tensor.bytes, dtype, &tensor.shape, &Device::Cpu)
                    .with_context(|| format!("tensor {} does not match its shape", tensor.name))?
                    .to_dtype(self.dtype)?
                    .to_device(&self.device)?;
                Ok(CandleMatrix {
                    matmul: QMatMul::Tensor(t.clone()),
                    rows,
                    dense: Some(t),
                    raw: None,
                })
            }
        }
    }

    fn vector(&self, values: Vec<f32>) -> anyhow::Result<Tensor> {
        let n = values.len();
        Ok(Tensor::from_vec(values, n, &self.device)?.to_dtype(self.dtype)?)
    }

    fn stack(&self, parts: &[&CandleMatrix]) -> anyhow::Result<Option<CandleMatrix>> {
        // Dense weights stack by concatenation; quantized ones of one type by their bytes.
        if parts.iter().all(|p| p.dense.is_some()) {
            let tensors: Vec<&Tensor> = parts.iter().filter_map(|p| p.dense.as_ref()).collect();
            let t = Tensor::cat(&tensors, 0)?;
            let rows = t.dim(0)?;
            return Ok(Some(CandleMatrix {
                matmul: QMatMul::Tensor(t.clone()),
                rows,
                dense: Some(t),
                raw: None,
            }));
        }
        let raws: Option<Vec<&RawTensor>> = parts.iter().map(|p| p.raw.as_ref()).collect();
        let Some(raws) = raws else { return Ok(None) };
        let first = raws[0];
        if raws
            .iter()
            .any(|r| r.encoding != first.encoding || r.shape.get(1) != first.shape.get(1))
        {
            return Ok(None);
        }
        let rows: usize = raws.iter().map(|r| r.shape[0]).sum();
        let mut bytes = Vec::new();
        for r in &raws {
            bytes.extend_from_slice(&r.bytes);
        }
        let stacked = RawTensor {
            name: format!("{}+", first.name),
            encoding: first.encoding,
            shape: vec![rows, first.shape[1]],
            bytes,
        };
        self.matrix(stacked).map(Some)
    }

    fn rows_of(&self, matrix: &CandleMatrix) -> usize {
        matrix.rows
    }

    fn rope(&self, spec: &RopeSpec, max_positions: usize) -> anyhow::Result<CandleRope> {
        if !spec.rotary_dim.is_multiple_of(2) {
            bail!("odd rotary dimension");
        }
        let half = spec.rotary_dim / 2;
        let positions = max_positions.min(MAX_TABLE);
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for i in 0..half {
                let base =
                    1.0 / f64::from(spec.theta).powf((2 * i) as f64 / spec.rotary_dim as f64);
                let factor = spec.freq_factors.get(i).copied().unwrap_or(1.0);
                let a = p as f64 * base / f64::from(factor);
                cos.push(a.cos() as f32 * spec.magnitude);
                sin.push(a.sin() as f32 * spec.magnitude);
            }
        }
        Ok(CandleRope {
            cos: Tensor::from_vec(cos, (positions, half), &self.device)?.to_dtype(self.dtype)?,
            sin: Tensor::from_vec(sin, (positions, half), &self.device)?.to_dtype(self.dtype)?,
            layout: spec.layout,
        })
    }

    fn from_rows(&self, values: Vec<f32>, rows: usize, cols: usize) -> anyhow::Result<Tensor> {
        Ok(Tensor::from_vec(values, (rows, cols), &self.device)?.to_dtype(self.dtype)?)
    }

    fn to_rows(&self, x: &Tensor) -> anyhow::Result<Vec<f32>> {
        Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    fn shape(&self, x: &Tensor) -> (usize, usize) {
        x.dims2().unwrap_or((0, 0))
    }

    fn embed(
        &self,
        table: &CandleMatrix,
        ids: &[u32],
        scale: Option<f32>,
    ) -> anyhow::Result<Tensor> {
        let index = Tensor::new(ids, &self.device)?;
        let rows = match (&table.dense, &table.raw) {
            (Some(dense), _) => dense.index_select(&index, 0)?,
            (None, Some(_)) => table.matmul.embedding(&index.unsqueeze(0)?)?.squeeze(0)?,
            _ => bail!("an embedding table without weights"),
        };
        let rows = rows.to_dtype(self.dtype)?;
        Ok(match scale {
            Some(s) => (rows * f64::from(s))?,
            None => rows,
        })
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> anyhow::Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)?)
    }

    fn head_norm(&self, x: Tensor, weight: &Tensor, eps: f32) -> anyhow::Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        let d = weight.dim(0)?;
        let heads = x.reshape((rows * cols / d, d))?;
        Ok(candle_nn::ops::rms_norm(&heads, weight, eps)?.reshape((rows, cols))?)
    }

    fn linear(
        &self,
        x: &Tensor,
        weights: &[(&CandleMatrix, Option<&Tensor>)],
    ) -> anyhow::Result<Vec<Tensor>> {
        weights
            .iter()
            .map(|(m, bias)| {
                let y = m.matmul.forward(x)?;
                Ok(match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            })
            .collect()
    }

    fn split(&self, x: Tensor, widths: &[usize]) -> anyhow::Result<Vec<Tensor>> {
        let mut at = 0;
        let mut parts = Vec::new();
        for &w in widths {
            parts.push(x.narrow(1, at, w)?.contiguous()?);
            at += w;
        }
        Ok(parts)
    }

    fn apply_rope(
        &self,
        x: Tensor,
        head_dim: usize,
        rope: &CandleRope,
        seqs: &[SeqRows],
    ) -> anyhow::Result<Tensor> {
        let (_, cols) = x.dims2()?;
        let heads = cols / head_dim;
        let half = rope.cos.dim(1)?;
        if half * 2 != head_dim {
            bail!("partial rotary embeddings are not implemented on this device");
        }
        let mut parts = Vec::new();
        for seq in seqs {
            if seq.position + seq.len > rope.cos.dim(0)? {
                bail!("position {} is past the rope table", seq.position + seq.len);
            }
            let cos = rope.cos.narrow(0, seq.position, seq.len)?;
            let sin = rope.sin.narrow(0, seq.position, seq.len)?;
            let rows = x
                .narrow(0, seq.start, seq.len)?
                .reshape((1, seq.len, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            let rotated = match rope.layout {
                RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&rows, &cos, &sin)?,
                RopeLayout::Halves => candle_nn::rotary_emb::rope(&rows, &cos, &sin)?,
            };
            parts.push(rotated.transpose(1, 2)?.reshape((seq.len, cols))?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        seqs: &[SeqRows],
        caches: &mut [&mut CandleKv],
        shape: &AttentionShape,
    ) -> anyhow::Result<Tensor> {
        if shape.softcap.is_some() {
            bail!("attention soft-capping is not implemented on this device");
        }
        let d = shape.head_dim;
        let group = shape.n_heads / shape.n_kv_heads;
        let mut outs = Vec::new();
        for (seq, cache) in seqs.iter().zip(caches.iter_mut()) {
            if cache.len != seq.position {
                bail!(
                    "the cache holds {} positions, but the step starts at {}",
                    cache.len,
                    seq.position
                );
            }
            let t = seq.len;
            let heads = |x: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                x.narrow(0, seq.start, t)?
                    .reshape((1, t, n, d))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let qh = heads(q, shape.n_heads)?;
            let (keys, values) =
                cache.append(&heads(k, shape.n_kv_heads)?, &heads(v, shape.n_kv_heads)?)?;
            let total = keys.dim(2)?;
            let qh = qh.reshape((1, shape.n_kv_heads, group * t, d))?;
            let scores = (qh.matmul(&keys.t()?)? * f64::from(shape.scale))?;
            let scores = if t > 1 || shape.window.is_some_and(|w| w < total) {
                let mask = mask(t, seq.position, shape.window, self.dtype, &self.device)?;
                scores
                    .reshape((1, shape.n_kv_heads, group, t, total))?
                    .broadcast_add(&mask)?
                    .reshape((1, shape.n_kv_heads, group * t, total))?
            } else {
                scores
            };
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let out = weights
                .matmul(&values)?
                .reshape((1, shape.n_heads, t, d))?
                .transpose(1, 2)?
                .reshape((t, shape.n_heads * d))?;
            outs.push(out);
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    fn gated(&self, activation: Activation, gate: &Tensor, up: &Tensor) -> anyhow::Result<Tensor> {
        let g = match activation {
            Activation::Silu => candle_nn::ops::silu(gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        Ok((g * up)?)
    }

    fn add(&self, x: Tensor, y: &Tensor) -> anyhow::Result<Tensor> {
        Ok((x + y)?)
    }

    fn select_rows(&self, x: &Tensor, rows: &[usize]) -> anyhow::Result<Tensor> {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        Ok(x.index_select(&Tensor::new(ids.as_slice(), &self.device)?, 0)?)
    }

    fn kv_bytes(kv: &CandleKv) -> usize {
        kv.buffers
            .as_ref()
            .map_or(0, |(k, _)| 2 * k.elem_count() * k.dtype().size_in_bytes())
    }

    fn kv_truncate(
        &self,
        kv: &mut CandleKv,
        positions: usize,
        _shape: &AttentionShape,
    ) -> anyhow::Result<()> {
        kv.len = kv.len.min(positions);
        Ok(())
    }
}

impl CandleKv {
    /// Appends `k` and `v` of shape (1, kv_heads, t, head_dim) and returns views of
    /// everything cached so far.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let added = k.dim(2)?;
        let needed = self.len + added;
        let capacity = self
            .buffers
            .as_ref()
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0));
        if needed > capacity {
            let capacity = needed.max(capacity * 2).max(64);
            let grow = |like: &Tensor, old: Option<&Tensor>| -> candle_core::Result<Tensor> {
                let (b, h, _, d) = like.dims4()?;
                let new = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
                if let Some(old) = old
                    && self.len > 0
                {
                    new.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(new)
            };
            let keys = grow(k, self.buffers.as_ref().map(|(k, _)| k))?;
            let values = grow(v, self.buffers.as_ref().map(|(_, v)| v))?;
            self.buffers = Some((keys, values));
        }
        let (keys, values) = self.buffers.as_ref().expect("buffers were just made");
        keys.slice_set(&k.contiguous()?, 2, self.len)?;
        values.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((keys.narrow(2, 0, needed)?, values.narrow(2, 0, needed)?))
    }
}

/// Copies of cached positions, for the prefix cache (as `KvLayer`'s, on candle's tensors).
impl CandleKv {
    /// Positions `[from, to)` as a cache of their own (None when the cache holds fewer).
    pub fn copy_positions(&self, from: usize, to: usize) -> anyhow::Result<Option<CandleKv>> {
        let Some((keys, values)) = &self.buffers else {
            return Ok((from == to && from == 0).then(CandleKv::default));
        };
        if from > to || to > self.len {
            return Ok(None);
        }
        let keys = keys.narrow(2, from, to - from)?.contiguous()?;
        let values = values.narrow(2, from, to - from)?.contiguous()?;
        Ok(Some(CandleKv {
            buffers: Some((keys, values)),
            len: to - from,
        }))
    }

    /// Appends `blocks`' positions, in order, after this cache's own.
    pub fn extend_from(&mut self, blocks: &[&CandleKv]) -> anyhow::Result<()> {
        for block in blocks {
            if let Some((keys, values)) = &block.buffers {
                let keys = keys.narrow(2, 0, block.len)?;
                let values = values.narrow(2, 0, block.len)?;
                self.append(&keys, &values)?;
            }
        }
        Ok(())
    }
}

/// Additive mask of shape (t, position + t): query i (at position + i) sees keys up to
/// and including position + i, and not older than the window.
fn mask(
    t: usize,
    position: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let total = position + t;
    let values: Vec<f32> = (0..t)
        .flat_map(|i| {
            let at = position + i;
            (0..total).map(move |j| {
                let too_old = window.is_some_and(|w| j + w <= at);
                if j > at || too_old {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (t, total), device)?.to_dtype(dtype)
}

/// The index of the largest logit (greedy decoding), for callers that only need that.
pub fn argmax(logits: &Tensor) -> candle_core::Result<u32> {
    logits.argmax(D::Minus1)?.to_scalar::<u32>()
}
