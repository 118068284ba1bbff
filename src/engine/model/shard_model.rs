//! The decoder of every family, able to run any contiguous range of layers, on any backend.
//!
//! candle-transformers keeps its decoder blocks private and always loads every layer, so
//! the sharded model is written here: embedding on the first shard, decoder layers, final
//! norm and output head on the last. The families differ only in switches of
//! [`ModelConfig`] (biases, q/k norms, extra norms, the activation, sliding windows, rope);
//! one layer function reads them.
//!
//! A forward pass takes a *batch*: rows of several sequences at once, each at its own
//! position with its own cache. Matmuls run over every row together (the weights are read
//! once per batch); attention runs per row over its sequence's cache.

use std::sync::Arc;

use anyhow::{Context, bail};

use super::backend::{Backend, SeqRows};
use super::candle_backend::{CandleBackend, CandleKv};
use super::config::{Architecture, ModelConfig};
use super::shard::Shard;
use super::tensor_names::{GlobalTensor, LayerTensor};
use super::weights::{LoadCounter, WeightSource};
use crate::engine::cpu::CpuBackend;
use crate::engine::cpu::attention::{AttentionShape, KvLayer};

/// Prompt tokens run through the layers at once, at most; longer prompts go in chunks.
pub const PREFILL_CHUNK: usize = 512;

/// What a shard is fed: token ids on the first shard, a hidden state on the others.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardInput {
    Tokens(Vec<u32>),
    Hidden(HiddenState),
}

impl ShardInput {
    pub fn len(&self) -> usize {
        match self {
            ShardInput::Tokens(t) => t.len(),
            ShardInput::Hidden(h) => h.rows,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of hidden states (f32, row-major), as they travel between shards.
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenState {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// What a shard produces: a hidden state for the next shard, or, on the last shard, the
/// logits of the last position.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardOutput {
    Hidden(HiddenState),
    Logits(Vec<f32>),
}

/// One layer's keys and values for one sequence, on whichever backend holds them.
pub enum AnyKv {
    Cpu(KvLayer),
    Candle(CandleKv),
}

/// How a backend finds its own caches in an [`AnyKv`].
pub trait KvSlot: Backend {
    fn new_kv() -> AnyKv;
    fn kv(slot: &mut AnyKv) -> anyhow::Result<&mut Self::Kv>;
    fn kv_ref(slot: &AnyKv) -> Option<&Self::Kv>;
}

impl KvSlot for CpuBackend {
    fn new_kv() -> AnyKv {
        AnyKv::Cpu(KvLayer::default())
    }
    fn kv(slot: &mut AnyKv) -> anyhow::Result<&mut KvLayer> {
        match slot {
            AnyKv::Cpu(kv) => Ok(kv),
            AnyKv::Candle(_) => bail!("a cache of another backend"),
        }
    }
    fn kv_ref(slot: &AnyKv) -> Option<&KvLayer> {
        match slot {
            AnyKv::Cpu(kv) => Some(kv),
            AnyKv::Candle(_) => None,
        }
    }
}

impl KvSlot for CandleBackend {
    fn new_kv() -> AnyKv {
        AnyKv::Candle(CandleKv::default())
    }
    fn kv(slot: &mut AnyKv) -> anyhow::Result<&mut CandleKv> {
        match slot {
            AnyKv::Candle(kv) => Ok(kv),
            AnyKv::Cpu(_) => bail!("a cache of another backend"),
        }
    }
    fn kv_ref(slot: &AnyKv) -> Option<&CandleKv> {
        match slot {
            AnyKv::Candle(kv) => Some(kv),
            AnyKv::Cpu(_) => None,
        }
    }
}

/// Everything one shard caches for one sequence: a cache per layer and the number of
/// positions seen.
pub struct SequenceCache {
    pub layers: Vec<AnyKv>,
    /// Positions processed so far: the position of the next token.
    pub len: usize,
    /// Bytes the layer caches hold (kept up to date by each step).
    pub bytes: usize,
}

/// q, k and v projections: one stacked matrix when the file's layout allows it.
enum Qkv<B: Backend> {
    Fused {
        matrix: B::Matrix,
        bias: Option<B::Vector>,
    },
    Separate {
        q: B::Matrix,
        k: B::Matrix,
        v: B::Matrix,
        biases: Option<[B::Vector; 3]>,
    },
}

/// gate and up projections: stacked when possible.
enum GateUp<B: Backend> {
    Fused(B::Matrix),
    Separate(B::Matrix, B::Matrix),
}

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    qkv: Qkv<B>,
    q_norm: Option<B::Vector>,
    k_norm: Option<B::Vector>,
    o: B::Matrix,
    post_attn_norm: Option<B::Vector>,
    ffn_norm: B::Vector,
    gate_up: GateUp<B>,
    down: B::Matrix,
    post_ffn_norm: Option<B::Vector>,
    attention: AttentionShape,
    /// Whether this layer uses the local (sliding-window) rope.
    local_rope: bool,
    /// Bytes of this layer's tensors as read from the model file.
    bytes: u64,
}

/// The loaded weights of one shard and what it needs to run them.
pub struct ShardModel<B: Backend> {
    backend: B,
    shard: Shard,
    config: ModelConfig,
    /// Shared with the node's other loaded shards that hold the same tensors (see
    /// [`ShardModel::load_reusing`]).
    embedding: Option<Arc<B::Matrix>>,
    layers: Vec<Arc<Layer<B>>>,
    final_norm: Option<B::Vector>,
    /// The output head; None with tied embeddings (the embedding serves).
    head: Option<Arc<B::Matrix>>,
    rope: B::Rope,
    rope_local: Option<B::Rope>,
    layer_bytes: u64,
    other_bytes: u64,
}

impl<B: KvSlot> ShardModel<B> {
    /// Loads the shard's tensors, and only those.
    pub fn load(source: &WeightSource, shard: &Shard, backend: B) -> anyhow::Result<Self> {
        Self::load_reusing(source, shard, backend, &[])
    }

    /// Loads the shard, taking every layer (and the embedding and head) that one of
    /// `donors` — shards of the same file on the same backend — already holds instead of
    /// reading it again. A request planned again after losing a node often gets a range
    /// that overlaps the one this node ran: only the new layers are read, and the two
    /// shards share the rest in memory.
    pub fn load_reusing(
        source: &WeightSource,
        shard: &Shard,
        backend: B,
        donors: &[&ShardModel<B>],
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
        // Every tensor's shape is checked against the config before it is read: a file
        // that does not fit its own metadata is refused here, naming the tensor, on every
        // backend (a mismatch found later would surface deep in a matmul, or not at all).
        let matrix = |name: &str, is_layer: bool, shape: [usize; 2]| -> anyhow::Result<B::Matrix> {
            expect_shape(source, name, &shape)?;
            let tensor = source.read(name, &counter, is_layer)?;
            backend.matrix(tensor)
        };
        let values = |name: &str, is_layer: bool, len: usize| -> anyhow::Result<Vec<f32>> {
            expect_shape(source, name, &[len])?;
            source.read(name, &counter, is_layer)?.to_f32()
        };
        let vector =
            |name: &str, is_layer: bool, len: usize, offset: f32| -> anyhow::Result<B::Vector> {
                let mut values = values(name, is_layer, len)?;
                if offset != 0.0 {
                    for v in &mut values {
                        *v += offset;
                    }
                }
                backend.vector(values)
            };
        let c = &config;
        let hidden = c.hidden_size;
        let norm = |name: &str, len: usize| vector(name, true, len, c.norm_offset);
        let embedding_name = source.global_name(GlobalTensor::Embedding);
        let head_name = source.global_name(GlobalTensor::Head);
        let tied = !source.has(head_name);
        let embedding = if shard.is_first() || (shard.is_last() && tied) {
            match donors.iter().find_map(|d| d.embedding.clone()) {
                Some(shared) => Some(shared),
                None => Some(Arc::new(matrix(
                    embedding_name,
                    false,
                    [c.vocab_size, hidden],
                )?)),
            }
        } else {
            None
        };
        let mut layers = Vec::with_capacity(shard.len());
        let q_width = c.n_heads * c.head_dim;
        let kv_width = c.n_kv_heads * c.head_dim;
        for layer in shard.start_layer..shard.end_layer {
            if let Some(shared) = donors.iter().find_map(|d| d.layer(layer)) {
                layers.push(shared);
                continue;
            }
            let read_before = counter.layer_bytes();
            let name = |t: LayerTensor| source.layer_name(layer, t);
            // Phi-3 files hold q, k and v stacked, and gate and up stacked; the other
            // families' hold them apart (a file missing one is told which).
            let phi3 = c.architecture == Architecture::Phi3;
            let qkv = if phi3 || source.has(&name(LayerTensor::Qkv)) {
                let matrix = matrix(
                    &name(LayerTensor::Qkv),
                    true,
                    [q_width + 2 * kv_width, hidden],
                )?;
                Qkv::Fused { matrix, bias: None }
            } else {
                let (q, k, v) = (
                    matrix(&name(LayerTensor::Q), true, [q_width, hidden])?,
                    matrix(&name(LayerTensor::K), true, [kv_width, hidden])?,
                    matrix(&name(LayerTensor::V), true, [kv_width, hidden])?,
                );
                let biases = if c.qkv_bias {
                    Some([
                        values(&name(LayerTensor::QBias), true, q_width)?,
                        values(&name(LayerTensor::KBias), true, kv_width)?,
                        values(&name(LayerTensor::VBias), true, kv_width)?,
                    ])
                } else {
                    None
                };
                match backend.stack(&[&q, &k, &v])? {
                    Some(matrix) => Qkv::Fused {
                        matrix,
                        bias: biases
                            .map(|[q, k, v]| backend.vector([q, k, v].concat()))
                            .transpose()?,
                    },
                    None => Qkv::Separate {
                        q,
                        k,
                        v,
                        biases: biases
                            .map(|[q, k, v]| -> anyhow::Result<_> {
                                Ok([backend.vector(q)?, backend.vector(k)?, backend.vector(v)?])
                            })
                            .transpose()?,
                    },
                }
            };
            let ffn = c.intermediate_size;
            let gate_up = if phi3 && !source.has(&name(LayerTensor::Gate)) {
                GateUp::Fused(matrix(&name(LayerTensor::GateUp), true, [2 * ffn, hidden])?)
            } else {
                let gate = matrix(&name(LayerTensor::Gate), true, [ffn, hidden])?;
                let up = matrix(&name(LayerTensor::Up), true, [ffn, hidden])?;
                match backend.stack(&[&gate, &up])? {
                    Some(fused) => GateUp::Fused(fused),
                    None => GateUp::Separate(gate, up),
                }
            };
            let o = matrix(&name(LayerTensor::Output), true, [hidden, q_width])?;
            let down = matrix(&name(LayerTensor::Down), true, [hidden, ffn])?;
            let head_norm = |t: LayerTensor| norm(&name(t), c.head_dim);
            layers.push(Arc::new(Layer {
                attn_norm: norm(&name(LayerTensor::AttnNorm), hidden)?,
                qkv,
                q_norm: c
                    .qk_norm
                    .then(|| head_norm(LayerTensor::QNorm))
                    .transpose()?,
                k_norm: c
                    .qk_norm
                    .then(|| head_norm(LayerTensor::KNorm))
                    .transpose()?,
                o,
                post_attn_norm: c
                    .post_norms
                    .then(|| norm(&name(LayerTensor::PostAttnNorm), hidden))
                    .transpose()?,
                ffn_norm: norm(&name(LayerTensor::FfnNorm), hidden)?,
                gate_up,
                down,
                post_ffn_norm: c
                    .post_norms
                    .then(|| norm(&name(LayerTensor::PostFfnNorm), hidden))
                    .transpose()?,
                attention: AttentionShape {
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    head_dim: c.head_dim,
                    scale: c.attention_scale,
                    window: c.layer_window(layer),
                    softcap: None,
                },
                local_rope: c.rope_local.is_some() && c.layer_window(layer).is_some(),
                bytes: counter.layer_bytes() - read_before,
            }));
        }
        let (final_norm, head) = if shard.is_last() {
            let norm = vector(
                source.global_name(GlobalTensor::FinalNorm),
                false,
                hidden,
                c.norm_offset,
            )?;
            let head = if tied {
                None
            } else {
                match donors.iter().find_map(|d| d.head.clone()) {
                    Some(shared) => Some(shared),
                    None => Some(Arc::new(matrix(head_name, false, [c.vocab_size, hidden])?)),
                }
            };
            (Some(norm), head)
        } else {
            (None, None)
        };
        let rope = backend.rope(&c.rope, c.context_length)?;
        let rope_local = c
            .rope_local
            .as_ref()
            .map(|spec| backend.rope(spec, c.context_length))
            .transpose()?;
        Ok(ShardModel {
            backend,
            shard: shard.clone(),
            config,
            embedding,
            final_norm,
            head,
            rope,
            rope_local,
            layer_bytes: layers.iter().map(|l| l.bytes).sum(),
            layers,
            other_bytes: counter.other_bytes(),
        })
    }

    /// How many layers this shard shares (the very same tensors in memory) with `other`.
    pub fn shared_layers(&self, other: &ShardModel<B>) -> usize {
        self.layers
            .iter()
            .filter(|l| other.layers.iter().any(|o| Arc::ptr_eq(l, o)))
            .count()
    }

    /// Layer `index` of the model, if this shard holds it.
    fn layer(&self, index: usize) -> Option<Arc<Layer<B>>> {
        (self.shard.start_layer..self.shard.end_layer)
            .contains(&index)
            .then(|| self.layers[index - self.shard.start_layer].clone())
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
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
        SequenceCache {
            layers: (0..self.layers.len()).map(|_| B::new_kv()).collect(),
            len: 0,
            bytes: 0,
        }
    }

    /// Checks that `input` suits this shard; returns its number of tokens. Everything is
    /// checked before anything is allocated: a message naming millions of tokens must be
    /// refused, not embedded.
    pub fn check_input(&self, input: &ShardInput, position: usize) -> anyhow::Result<usize> {
        let len = match input {
            ShardInput::Tokens(tokens) => {
                if !self.shard.is_first() {
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
                tokens.len()
            }
            ShardInput::Hidden(hidden) => {
                if self.shard.is_first() {
                    bail!(
                        "shard {} is the first shard: it takes tokens, not a hidden state",
                        self.shard
                    );
                }
                if hidden.rows == 0
                    || hidden.cols != self.config.hidden_size
                    || hidden.data.len() != hidden.rows * hidden.cols
                {
                    bail!(
                        "hidden state of {} rows × {} ({} values) does not fit: expected n>0 rows of {}",
                        hidden.rows,
                        hidden.cols,
                        hidden.data.len(),
                        self.config.hidden_size
                    );
                }
                hidden.rows
            }
        };
        if position + len > self.config.context_length {
            bail!(
                "the sequence would reach {} tokens, past the model's context of {}",
                position + len,
                self.config.context_length
            );
        }
        Ok(len)
    }

    /// Runs one sequence's input through the shard, in prompt chunks.
    pub fn forward(
        &self,
        input: ShardInput,
        cache: &mut SequenceCache,
    ) -> anyhow::Result<ShardOutput> {
        let len = self.check_input(&input, cache.len)?;
        let mut hidden = Vec::new();
        let mut last = None;
        let mut start = 0;
        while start < len {
            let n = PREFILL_CHUNK.min(len - start);
            let chunk = match &input {
                ShardInput::Tokens(t) => ShardInput::Tokens(t[start..start + n].to_vec()),
                ShardInput::Hidden(h) => ShardInput::Hidden(HiddenState {
                    data: h.data[start * h.cols..(start + n) * h.cols].to_vec(),
                    rows: n,
                    cols: h.cols,
                }),
            };
            let mut outputs = self.forward_batch(vec![(chunk, &mut *cache)])?;
            match outputs.pop().context("no output")? {
                ShardOutput::Hidden(h) => hidden.extend(h.data),
                logits @ ShardOutput::Logits(_) => last = Some(logits),
            }
            start += n;
        }
        match last {
            Some(logits) => Ok(logits),
            None => Ok(ShardOutput::Hidden(HiddenState {
                rows: len,
                cols: self.config.hidden_size,
                data: hidden,
            })),
        }
    }

    /// Runs a batch: each sequence's rows, at its cache's position. On error every cache
    /// is left as it was (positions this batch added are dropped).
    pub fn forward_batch(
        &self,
        batch: Vec<(ShardInput, &mut SequenceCache)>,
    ) -> anyhow::Result<Vec<ShardOutput>> {
        let mut seqs = Vec::with_capacity(batch.len());
        let mut rows = 0;
        for (input, cache) in &batch {
            let len = self.check_input(input, cache.len)?;
            seqs.push(SeqRows {
                start: rows,
                len,
                position: cache.len,
            });
            rows += len;
        }
        let (inputs, mut caches): (Vec<ShardInput>, Vec<&mut SequenceCache>) =
            batch.into_iter().unzip();
        let result = self.run(&inputs, &seqs, &mut caches);
        for (seq, cache) in seqs.iter().zip(caches.iter_mut()) {
            let target = if result.is_ok() {
                seq.position + seq.len
            } else {
                seq.position
            };
            if result.is_err() {
                for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
                    if let Ok(kv) = B::kv(kv) {
                        self.backend
                            .kv_truncate(kv, seq.position, &layer.attention)?;
                    }
                }
            }
            cache.len = target;
            cache.bytes = cache
                .layers
                .iter()
                .filter_map(|kv| B::kv_ref(kv))
                .map(B::kv_bytes)
                .sum();
        }
        result
    }

    fn run(
        &self,
        inputs: &[ShardInput],
        seqs: &[SeqRows],
        caches: &mut [&mut SequenceCache],
    ) -> anyhow::Result<Vec<ShardOutput>> {
        let b = &self.backend;
        let c = &self.config;
        let mut x = if self.shard.is_first() {
            let ids: Vec<u32> = inputs
                .iter()
                .flat_map(|i| match i {
                    ShardInput::Tokens(t) => t.clone(),
                    ShardInput::Hidden(_) => Vec::new(),
                })
                .collect();
            let table = self
                .embedding
                .as_ref()
                .context("no embedding on the first shard")?;
            b.embed(table, &ids, c.embedding_scale)?
        } else {
            let mut data = Vec::new();
            for i in inputs {
                if let ShardInput::Hidden(h) = i {
                    data.extend_from_slice(&h.data);
                }
            }
            let rows = data.len() / c.hidden_size;
            b.from_rows(data, rows, c.hidden_size)?
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let mut kvs: Vec<&mut B::Kv> = caches
                .iter_mut()
                .map(|cache| B::kv(&mut cache.layers[i]))
                .collect::<anyhow::Result<_>>()?;
            x = self
                .run_layer(layer, x, seqs, &mut kvs)
                .with_context(|| format!("layer {}", self.shard.start_layer + i))?;
        }
        if !self.shard.is_last() {
            let data = b.to_rows(&x)?;
            if data.iter().any(|v| !v.is_finite()) {
                bail!("shard {} produced NaN or infinite activations", self.shard);
            }
            return Ok(seqs
                .iter()
                .map(|s| {
                    ShardOutput::Hidden(HiddenState {
                        data: data[s.start * c.hidden_size..(s.start + s.len) * c.hidden_size]
                            .to_vec(),
                        rows: s.len,
                        cols: c.hidden_size,
                    })
                })
                .collect());
        }
        // Only the last position of each sequence needs logits.
        let last: Vec<usize> = seqs.iter().map(|s| s.start + s.len - 1).collect();
        let x = b.select_rows(&x, &last)?;
        let norm = self
            .final_norm
            .as_ref()
            .context("no final norm on the last shard")?;
        let x = b.rms_norm(&x, norm, c.rms_norm_eps as f32)?;
        let head = self
            .head
            .as_ref()
            .or(self.embedding.as_ref())
            .context("no output head on the last shard")?;
        let logits = b.linear(&x, &[(head, None)])?.remove(0);
        let vocab = c.vocab_size;
        let data = b.to_rows(&logits)?;
        if data.iter().any(|v| !v.is_finite()) {
            bail!("the model produced NaN or infinite logits");
        }
        Ok(data
            .chunks_exact(vocab)
            .map(|l| ShardOutput::Logits(l.to_vec()))
            .collect())
    }

    fn run_layer(
        &self,
        layer: &Layer<B>,
        x: B::Act,
        seqs: &[SeqRows],
        kvs: &mut [&mut B::Kv],
    ) -> anyhow::Result<B::Act> {
        let b = &self.backend;
        let c = &self.config;
        let eps = c.rms_norm_eps as f32;
        let h = b.rms_norm(&x, &layer.attn_norm, eps)?;
        let q_width = c.n_heads * c.head_dim;
        let kv_width = c.n_kv_heads * c.head_dim;
        let (q, k, v) = match &layer.qkv {
            Qkv::Fused { matrix, bias } => {
                let fused = b.linear(&h, &[(matrix, bias.as_ref())])?.remove(0);
                let mut parts = b.split(fused, &[q_width, kv_width, kv_width])?.into_iter();
                let (q, k, v) = (parts.next(), parts.next(), parts.next());
                (q.context("q")?, k.context("k")?, v.context("v")?)
            }
            Qkv::Separate { q, k, v, biases } => {
                let bias = |i: usize| biases.as_ref().map(|b| &b[i]);
                let mut out = b
                    .linear(&h, &[(q, bias(0)), (k, bias(1)), (v, bias(2))])?
                    .into_iter();
                let (q, k, v) = (out.next(), out.next(), out.next());
                (q.context("q")?, k.context("k")?, v.context("v")?)
            }
        };
        let (q, k) = match (&layer.q_norm, &layer.k_norm) {
            (Some(qn), Some(kn)) => (b.head_norm(q, qn, eps)?, b.head_norm(k, kn, eps)?),
            _ => (q, k),
        };
        let rope = match (&self.rope_local, layer.local_rope) {
            (Some(local), true) => local,
            _ => &self.rope,
        };
        let q = b.apply_rope(q, c.head_dim, rope, seqs)?;
        let k = b.apply_rope(k, c.head_dim, rope, seqs)?;
        let attn = b.attention(&q, &k, &v, seqs, kvs, &layer.attention)?;
        let mut o = b.linear(&attn, &[(&layer.o, None)])?.remove(0);
        if let Some(norm) = &layer.post_attn_norm {
            o = b.rms_norm(&o, norm, eps)?;
        }
        let x = b.add(&x, &o)?;
        let h = b.rms_norm(&x, &layer.ffn_norm, eps)?;
        let (gate, up) = match &layer.gate_up {
            GateUp::Fused(m) => {
                let fused = b.linear(&h, &[(m, None)])?.remove(0);
                let mut parts = b
                    .split(fused, &[c.intermediate_size, c.intermediate_size])?
                    .into_iter();
                (parts.next().context("gate")?, parts.next().context("up")?)
            }
            GateUp::Separate(g, u) => {
                let mut out = b.linear(&h, &[(g, None), (u, None)])?.into_iter();
                (out.next().context("gate")?, out.next().context("up")?)
            }
        };
        let a = b.gated(c.activation, &gate, &up)?;
        let mut d = b.linear(&a, &[(&layer.down, None)])?.remove(0);
        if let Some(norm) = &layer.post_ffn_norm {
            d = b.rms_norm(&d, norm, eps)?;
        }
        b.add(&x, &d)
    }
}

/// Checks that the file holds tensor `name` with the shape the config needs (rows first).
fn expect_shape(source: &WeightSource, name: &str, expected: &[usize]) -> anyhow::Result<()> {
    match source.shape(name) {
        None => bail!("tensor {name} is missing from {}", source.path().display()),
        Some(shape) if shape != expected => {
            bail!("tensor {name} has shape {shape:?}; the model config needs {expected:?}")
        }
        Some(_) => Ok(()),
    }
}
