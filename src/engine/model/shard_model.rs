//! The decoder of every family, able to run any contiguous range of layers, on any backend.
//!
//! candle-transformers keeps its decoder blocks private and always loads every layer, so
//! the sharded model is written here: embedding on the first shard, decoder layers, final
//! norm and output head on the last. The families differ only in switches of
//! [`ModelConfig`] (biases, q/k norms, extra norms, the activation, sliding windows, rope);
//! one layer function reads them (`layer.rs`), and one loader reads every family's
//! tensors (`loader.rs`).
//!
//! A forward pass takes a *batch*: rows of several sequences at once, each at its own
//! position with its own cache. Matmuls run over every row together (the weights are read
//! once per batch); attention runs per row over its sequence's cache.

use std::sync::Arc;

use anyhow::{Context, bail};

use super::backend::{Backend, SeqRows};
use super::collective::Collective;
use super::config::ModelConfig;
use super::layer::{Layer, all_reduce};
use super::loader::TensorReader;
use super::sequence_cache::{AnyKv, KvSlot, SequenceCache};
use super::shard::Shard;
use super::shard_io::{HiddenState, ShardInput, ShardOutput};
use super::slice::SplitUnits;
use super::weights::WeightSource;

/// Prompt tokens run through the layers at once, at most; longer prompts go in chunks.
pub const PREFILL_CHUNK: usize = 512;

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
        if let Some(slice) = &shard.slice {
            slice
                .check(&config, &SplitUnits::of(source))
                .with_context(|| format!("shard {shard} cannot be loaded"))?;
        }
        // Only shards holding the same part of every matrix share tensors.
        let donors: Vec<&ShardModel<B>> = donors
            .iter()
            .copied()
            .filter(|d| d.shard.slice == shard.slice)
            .collect();
        let reader = TensorReader::new(source, &backend, &config).with_slice(shard.slice.as_ref());
        let tied = reader.tied();
        let embedding = if shard.is_first() || (shard.is_last() && tied) {
            match donors.iter().find_map(|d| d.embedding.clone()) {
                Some(shared) => Some(shared),
                None => Some(Arc::new(reader.embedding()?)),
            }
        } else {
            None
        };
        let mut layers = Vec::with_capacity(shard.len());
        for layer in shard.start_layer..shard.end_layer {
            match donors.iter().find_map(|d| d.layer(layer)) {
                Some(shared) => layers.push(shared),
                None => layers.push(Arc::new(reader.layer(layer)?)),
            }
        }
        let (final_norm, head) = if shard.is_last() {
            let norm = reader.final_norm()?;
            let head = if tied {
                None
            } else {
                match donors.iter().find_map(|d| d.head.clone()) {
                    Some(shared) => Some(shared),
                    None => Some(Arc::new(reader.head()?)),
                }
            };
            (Some(norm), head)
        } else {
            (None, None)
        };
        let other_bytes = reader.counter.other_bytes();
        let c = &config;
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
            other_bytes,
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

    /// KV heads each layer caches (a tensor-parallel member's, or all).
    pub fn kv_heads(&self) -> usize {
        self.layers
            .first()
            .map_or(self.config.n_kv_heads, |l| l.attention.n_kv_heads)
    }

    /// A fresh cache for a sequence on this shard.
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache {
            layers: (0..self.layers.len()).map(|_| B::new_kv()).collect(),
            len: 0,
            bytes: 0,
        }
    }

    /// Positions `[from, to)` of `cache` as a cache of their own: a block of the prefix
    /// cache (`engine::serve::prefix_cache`).
    pub fn cut_block(
        &self,
        cache: &SequenceCache,
        from: usize,
        to: usize,
    ) -> anyhow::Result<SequenceCache> {
        if from > to || to > cache.len || cache.layers.len() != self.layers.len() {
            bail!(
                "positions [{from}, {to}) are not in a cache of {} positions",
                cache.len
            );
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for (layer, kv) in self.layers.iter().zip(&cache.layers) {
            let shape = &layer.attention;
            let width = shape.n_kv_heads * shape.head_dim;
            layers.push(
                B::kv_copy(kv, from, to, width)?
                    .with_context(|| format!("the cache lacks positions [{from}, {to})"))?,
            );
        }
        let bytes = Self::bytes_of(&layers);
        Ok(SequenceCache {
            layers,
            len: to - from,
            bytes,
        })
    }

    /// A cache made of `blocks`, one after another: a request's prefix restored from the
    /// prefix cache (each block cut by [`ShardModel::cut_block`] of this shard's layers).
    pub fn join_blocks(&self, blocks: &[&SequenceCache]) -> anyhow::Result<SequenceCache> {
        let mut cache = self.new_cache();
        for (i, slot) in cache.layers.iter_mut().enumerate() {
            let parts: Vec<&AnyKv> = blocks
                .iter()
                .map(|b| b.layers.get(i).context("a block of another layer range"))
                .collect::<anyhow::Result<_>>()?;
            B::kv_extend(slot, &parts)?;
        }
        cache.len = blocks.iter().map(|b| b.len).sum();
        cache.bytes = Self::bytes_of(&cache.layers);
        Ok(cache)
    }

    /// The bytes a cache's layers hold.
    fn bytes_of(layers: &[AnyKv]) -> usize {
        layers
            .iter()
            .filter_map(|kv| B::kv_ref(kv))
            .map(B::kv_bytes)
            .sum()
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

    /// Runs one sequence's input through the shard, in prompt chunks (a whole shard: a
    /// tensor-parallel slice runs only in batches with its group).
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
        self.forward_batch_with(batch, None)
    }

    /// As [`ShardModel::forward_batch`], as a member of a tensor-parallel group: `group`
    /// adds the members' partial sums. The leader gets the outputs; the other members get
    /// none (a later shard or the sampler needs only one copy).
    pub fn forward_batch_with(
        &self,
        batch: Vec<(ShardInput, &mut SequenceCache)>,
        group: Option<&mut dyn Collective>,
    ) -> anyhow::Result<Vec<ShardOutput>> {
        if self.shard.slice.is_some() != group.is_some() {
            bail!(
                "shard {} runs {} a tensor-parallel group",
                self.shard,
                if group.is_some() {
                    "without"
                } else {
                    "only with"
                }
            );
        }
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
        let result = self.run(&inputs, &seqs, &mut caches, group);
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
            cache.bytes = Self::bytes_of(&cache.layers);
        }
        result
    }

    fn run(
        &self,
        inputs: &[ShardInput],
        seqs: &[SeqRows],
        caches: &mut [&mut SequenceCache],
        mut group: Option<&mut dyn Collective>,
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
            match group.as_mut() {
                Some(group) => self.embed_slice(table, &ids, &mut **group)?,
                None => b.embed(table, &ids, c.embedding_scale)?,
            }
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
            let ropes = (&self.rope, self.rope_local.as_ref());
            x = layer
                .forward(b, c, ropes, x, seqs, &mut kvs, &mut group)
                .with_context(|| format!("layer {}", self.shard.start_layer + i))?;
        }
        let leader = self.shard.slice.as_ref().is_none_or(|s| s.is_leader());
        if !self.shard.is_last() {
            if !leader {
                return Ok(Vec::new());
            }
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
        let mut data = b.to_rows(&logits)?;
        if let Some(group) = group {
            // Each member has the logits of its vocabulary; the leader puts them together.
            match group.gather(data)? {
                None => return Ok(Vec::new()),
                Some(parts) => data = join_columns(&parts, last.len(), vocab)?,
            }
        }
        if data.iter().any(|v| !v.is_finite()) {
            bail!("the model produced NaN or infinite logits");
        }
        Ok(data
            .chunks_exact(vocab)
            .map(|l| ShardOutput::Logits(l.to_vec()))
            .collect())
    }
}

impl<B: KvSlot> ShardModel<B> {
    /// A member's embedding of `ids`: the rows of the tokens in its vocabulary, zeros for
    /// the others, added over the group (one member has each token, so the sum is exact).
    fn embed_slice(
        &self,
        table: &B::Matrix,
        ids: &[u32],
        group: &mut dyn Collective,
    ) -> anyhow::Result<B::Act> {
        let (b, c) = (&self.backend, &self.config);
        let vocab = self
            .shard
            .slice
            .as_ref()
            .map(|s| s.vocab.clone())
            .context("a group's embedding without a slice")?;
        let cols = c.hidden_size;
        let mine: Vec<(usize, u32)> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| vocab.contains(&(**id as usize)))
            .map(|(row, id)| (row, *id - vocab.start as u32))
            .collect();
        let mut values = vec![0f32; ids.len() * cols];
        if !mine.is_empty() {
            let local: Vec<u32> = mine.iter().map(|(_, id)| *id).collect();
            let rows = b.to_rows(&b.embed(table, &local, c.embedding_scale)?)?;
            for ((row, _), embedded) in mine.iter().zip(rows.chunks_exact(cols)) {
                values[row * cols..(row + 1) * cols].copy_from_slice(embedded);
            }
        }
        all_reduce(b, b.from_rows(values, ids.len(), cols)?, group)
    }
}

/// `rows` rows of `total` columns from the members' parts (each `rows × its width`,
/// member order: the columns in order).
fn join_columns(parts: &[Vec<f32>], rows: usize, total: usize) -> anyhow::Result<Vec<f32>> {
    let widths: Vec<usize> = parts.iter().map(|p| p.len() / rows.max(1)).collect();
    if widths.iter().sum::<usize>() != total
        || parts.iter().zip(&widths).any(|(p, w)| p.len() != w * rows)
    {
        bail!(
            "the group's logits ({:?} values) do not make {rows} rows of {total}",
            parts.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    let mut out = Vec::with_capacity(rows * total);
    for r in 0..rows {
        for (part, w) in parts.iter().zip(&widths) {
            out.extend_from_slice(&part[r * w..(r + 1) * w]);
        }
    }
    Ok(out)
}
