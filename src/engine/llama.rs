//! The Llama-family decoder (llama, qwen2), able to run any contiguous range of layers.
//!
//! candle-transformers keeps its decoder blocks private and always loads every layer, so
//! the sharded model is written here on candle-core and candle-nn: embedding on the first
//! shard, decoder layers, final norm and output head on the last shard.

use anyhow::{Context, bail};
use candle_core::{D, DType, Device, Tensor};

use super::config::ModelConfig;
use super::kv_cache::{LayerCache, SequenceCache};
use super::matrix::{CpuMatmul, Matrix};
use super::rope::Rope;
use super::shard::Shard;
use super::weights::{GlobalTensor, LayerTensor, LoadCounter, WeightSource};

/// Prompt tokens run through the layers at once, at most; longer prompts go in chunks.
const PREFILL_CHUNK: usize = 512;

/// What a shard is fed: token ids on the first shard, a hidden state on the others.
#[derive(Debug, Clone)]
pub enum ShardInput {
    Tokens(Vec<u32>),
    /// Shape (1, tokens, hidden).
    Hidden(Tensor),
}

/// What a shard produces: a hidden state for the next shard, or, on the last shard, the
/// logits of the last position (shape (vocab,), f32).
#[derive(Debug, Clone)]
pub enum ShardOutput {
    Hidden(Tensor),
    Logits(Tensor),
}

/// A projection `x @ Wᵀ (+ b)`.
struct Linear {
    weight: Matrix,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

struct DecoderLayer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Matrix,
    ffn_norm: Tensor,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The loaded weights of one shard and what it needs to run them.
pub struct ShardModel {
    shard: Shard,
    config: ModelConfig,
    device: Device,
    /// The dtype of activations (and of hidden states sent to the next shard).
    dtype: DType,
    embedding: Option<Matrix>,
    layers: Vec<DecoderLayer>,
    final_norm: Option<Tensor>,
    head: Option<Matrix>,
    rope: Rope,
    layer_bytes: u64,
    other_bytes: u64,
}

impl ShardModel {
    /// Loads the shard's tensors, and only those.
    pub fn load(
        source: &WeightSource,
        shard: &Shard,
        device: &Device,
        dtype: DType,
        kernels: CpuMatmul,
    ) -> anyhow::Result<Self> {
        let config = source.config().clone();
        if shard.n_layers != config.n_layers {
            bail!(
                "shard {shard} does not fit the model, which has {} layers",
                config.n_layers
            );
        }
        Shard::new(
            &shard.model_id,
            shard.start_layer,
            shard.end_layer,
            shard.n_layers,
        )?;
        let counter = LoadCounter::default();
        let matrix = |name: &str, is_layer: bool| {
            source.matrix(name, device, dtype, kernels, &counter, is_layer)
        };
        let dense =
            |name: &str, is_layer: bool| source.dense(name, device, dtype, &counter, is_layer);

        let embedding_name = source.global_name(GlobalTensor::Embedding);
        let embedding = if shard.is_first() {
            Some(matrix(embedding_name, false)?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(shard.len());
        for layer in shard.start_layer..shard.end_layer {
            let name = |t: LayerTensor| source.layer_name(layer, t);
            let bias = |t: LayerTensor| -> anyhow::Result<Option<Tensor>> {
                if config.qkv_bias {
                    Ok(Some(dense(&name(t), true)?))
                } else {
                    Ok(None)
                }
            };
            layers.push(DecoderLayer {
                attn_norm: dense(&name(LayerTensor::AttnNorm), true)?,
                q: Linear {
                    weight: matrix(&name(LayerTensor::Q), true)?,
                    bias: bias(LayerTensor::QBias)?,
                },
                k: Linear {
                    weight: matrix(&name(LayerTensor::K), true)?,
                    bias: bias(LayerTensor::KBias)?,
                },
                v: Linear {
                    weight: matrix(&name(LayerTensor::V), true)?,
                    bias: bias(LayerTensor::VBias)?,
                },
                o: matrix(&name(LayerTensor::Output), true)?,
                ffn_norm: dense(&name(LayerTensor::FfnNorm), true)?,
                gate: matrix(&name(LayerTensor::Gate), true)?,
                up: matrix(&name(LayerTensor::Up), true)?,
                down: matrix(&name(LayerTensor::Down), true)?,
            });
        }
        let (final_norm, head) = if shard.is_last() {
            let norm = dense(source.global_name(GlobalTensor::FinalNorm), false)?;
            let head_name = source.global_name(GlobalTensor::Head);
            // Tied embeddings: no separate head, the embedding matrix serves as the head.
            let head = if source.has(head_name) {
                matrix(head_name, false)?
            } else if let Some(embedding) = &embedding {
                embedding.clone()
            } else {
                matrix(embedding_name, false)
                    .context("the model has no output head and its tied embedding cannot be read")?
            };
            (Some(norm), Some(head))
        } else {
            (None, None)
        };
        let rope = Rope::new(
            config.head_dim,
            config.rope_theta,
            config.context_length,
            config.rope_layout,
            dtype,
            device,
        )?;
        Ok(ShardModel {
            shard: shard.clone(),
            config,
            device: device.clone(),
            dtype,
            embedding,
            layers,
            final_norm,
            head,
            rope,
            layer_bytes: counter.layer_bytes(),
            other_bytes: counter.other_bytes(),
        })
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of layer tensors read from the model file.
    pub fn layer_bytes(&self) -> u64 {
        self.layer_bytes
    }

    /// Bytes of the embedding, final norm and head read from the model file.
    pub fn other_bytes(&self) -> u64 {
        self.other_bytes
    }

    /// A fresh cache for a sequence on this shard.
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::new(self.layers.len())
    }

    /// Runs the shard's layers on `input`, whose first token is at position `cache.len`.
    pub fn forward(
        &self,
        input: ShardInput,
        cache: &mut SequenceCache,
    ) -> anyhow::Result<ShardOutput> {
        let position = cache.len;
        // Everything is checked before anything is allocated: a message naming millions
        // of tokens must be refused, not embedded.
        let seq_len = self.check_input(&input)?;
        if position + seq_len > self.config.context_length {
            bail!(
                "the sequence would reach {} tokens, past the model's context of {}",
                position + seq_len,
                self.config.context_length
            );
        }
        // Long prompts go through in chunks: attention scores grow with the square of the
        // tokens at once (a whole 8k prompt would need gigabytes per layer).
        let mut hidden_chunks = Vec::new();
        let mut start = 0;
        while start < seq_len {
            let len = PREFILL_CHUNK.min(seq_len - start);
            let x = match &input {
                ShardInput::Tokens(tokens) => {
                    let embedding = self.embedding.as_ref().context("no embedding")?;
                    let ids =
                        Tensor::new(&tokens[start..start + len], &self.device)?.unsqueeze(0)?;
                    embedding.embedding(&ids)?.to_dtype(self.dtype)?
                }
                ShardInput::Hidden(hidden) => hidden
                    .narrow(1, start, len)?
                    .to_device(&self.device)?
                    .to_dtype(self.dtype)?
                    .contiguous()?,
            };
            hidden_chunks.push(self.run_layers(x, cache)?);
            start += len;
        }
        match (&self.final_norm, &self.head) {
            (Some(norm), Some(head)) => {
                let x = hidden_chunks.last().context("no input")?;
                let last = x.narrow(1, x.dim(1)? - 1, 1)?;
                let normed = candle_nn::ops::rms_norm(
                    &last.contiguous()?,
                    norm,
                    self.config.rms_norm_eps as f32,
                )?;
                let logits = head.forward(&normed)?;
                Ok(ShardOutput::Logits(
                    logits.flatten_all()?.to_dtype(DType::F32)?,
                ))
            }
            _ if hidden_chunks.len() == 1 => Ok(ShardOutput::Hidden(hidden_chunks.remove(0))),
            _ => Ok(ShardOutput::Hidden(Tensor::cat(&hidden_chunks, 1)?)),
        }
    }

    /// Checks that `input` suits this shard; returns its number of tokens.
    fn check_input(&self, input: &ShardInput) -> anyhow::Result<usize> {
        match input {
            ShardInput::Tokens(tokens) => {
                if self.embedding.is_none() {
                    bail!(
                        "shard {} is not the first shard: it takes a hidden state, not tokens",
                        self.shard
                    );
                }
                if tokens.is_empty() {
                    bail!("empty input: no tokens to run");
                }
                if let Some(bad) = tokens
                    .iter()
                    .find(|&&t| t as usize >= self.config.vocab_size)
                {
                    bail!(
                        "token id {bad} is outside the vocabulary of {} tokens",
                        self.config.vocab_size
                    );
                }
                Ok(tokens.len())
            }
            ShardInput::Hidden(hidden) => {
                if self.embedding.is_some() {
                    bail!(
                        "shard {} is the first shard: it takes tokens, not a hidden state",
                        self.shard
                    );
                }
                let (batch, tokens, width) = hidden
                    .dims3()
                    .context("a hidden state must have shape (1, tokens, hidden)")?;
                if batch != 1 || tokens == 0 || width != self.config.hidden_size {
                    bail!(
                        "hidden state of shape ({batch}, {tokens}, {width}) does not fit: expected (1, n>0, {})",
                        self.config.hidden_size
                    );
                }
                Ok(tokens)
            }
        }
    }

    /// Runs every layer of the shard on `x` (1, tokens, hidden), which starts at the
    /// cache's position, and advances the cache.
    fn run_layers(&self, mut x: Tensor, cache: &mut SequenceCache) -> anyhow::Result<Tensor> {
        let position = cache.len;
        let seq_len = x.dim(1)?;
        let mask = if seq_len > 1 {
            Some(causal_mask(seq_len, position, self.dtype, &self.device)?)
        } else {
            None
        };
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = self.run_layer(layer, &x, slot, position, mask.as_ref())?;
        }
        cache.len = position + seq_len;
        Ok(x)
    }

    fn run_layer(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        cache: &mut Option<LayerCache>,
        position: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        let h = candle_nn::ops::rms_norm(x, &layer.attn_norm, eps)?;
        let attn = self.attention(layer, &h, cache, position, mask)?;
        let x = (x + attn)?;
        let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
        let mlp = layer
            .down
            .forward(&(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?)?;
        x + mlp
    }

    /// Grouped-query attention. The query heads that share a key/value head are folded
    /// into that head's rows, so the cached keys and values are never copied per head.
    fn attention(
        &self,
        layer: &DecoderLayer,
        h: &Tensor,
        cache: &mut Option<LayerCache>,
        position: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (batch, seq_len, _) = h.dims3()?;
        let split = |t: Tensor, heads: usize| {
            t.reshape((batch, seq_len, heads, c.head_dim))?
                .transpose(1, 2)
        };
        let q = split(layer.q.forward(h)?, c.n_heads)?;
        let k = split(layer.k.forward(h)?, c.n_kv_heads)?;
        let v = split(layer.v.forward(h)?, c.n_kv_heads)?;
        let q = self.rope.apply(&q, position)?;
        let k = self.rope.apply(&k, position)?;
        let (keys, values) = LayerCache::append(cache, &k, &v.contiguous()?)?;
        let total = keys.dim(2)?;

        // (b, n_heads, t, d) → (b, n_kv, group·t, d): heads of one group are adjacent.
        let group = c.group_size();
        let q = q.reshape((batch, c.n_kv_heads, group * seq_len, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let scores = (q.matmul(&keys.t()?)? * scale)?;
        let scores = match mask {
            Some(mask) => scores
                .reshape((batch, c.n_kv_heads, group, seq_len, total))?
                .broadcast_add(mask)?
                .reshape((batch, c.n_kv_heads, group * seq_len, total))?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&values)?;
        let out = out
            .reshape((batch, c.n_heads, seq_len, c.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq_len, c.n_heads * c.head_dim))?;
        layer.o.forward(&out)
    }
}

/// Additive causal mask of shape (t, position + t): query i (at position + i) may see
/// keys up to and including position + i.
fn causal_mask(
    seq_len: usize,
    position: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let total = position + seq_len;
    let mask: Vec<f32> = (0..seq_len)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > position + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (seq_len, total), device)?.to_dtype(dtype)
}

/// The index of the largest logit (greedy decoding), for callers that only need that.
pub fn argmax(logits: &Tensor) -> candle_core::Result<u32> {
    logits.argmax(D::Minus1)?.to_scalar::<u32>()
}
