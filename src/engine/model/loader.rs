//! Reading a shard's tensors onto a backend: one reader that checks every tensor's shape
//! against the config before it reads it, and a loader per part of the model (the
//! embedding, a layer, the final norm and head).
//!
//! A file that does not fit its own metadata is refused here, naming the tensor, on every
//! backend (a mismatch found later would surface deep in a matmul, or not at all).
//!
//! A tensor-parallel member reads only its slice of each matrix ([`super::slice`]):
//! row ranges or whole blocks of every row, as byte ranges of the file.

use anyhow::bail;

use super::backend::Backend;
use super::config::{Architecture, ModelConfig};
use super::layer::{GateUp, Layer, Qkv};
use super::slice::TensorSlice;
use super::tensor_names::{GlobalTensor, LayerTensor};
use super::weights::{LoadCounter, TensorPart, WeightSource};
use crate::engine::cpu::attention::AttentionShape;

/// Reads checked tensors of one model file onto one backend, counting the bytes.
pub(super) struct TensorReader<'a, B: Backend> {
    pub(super) source: &'a WeightSource,
    pub(super) backend: &'a B,
    pub(super) config: &'a ModelConfig,
    pub(super) counter: LoadCounter,
    /// The member's slice, when the shard is one of a tensor-parallel group.
    pub(super) slice: Option<&'a TensorSlice>,
}

impl<'a, B: Backend> TensorReader<'a, B> {
    pub(super) fn new(source: &'a WeightSource, backend: &'a B, config: &'a ModelConfig) -> Self {
        TensorReader {
            source,
            backend,
            config,
            counter: LoadCounter::default(),
            slice: None,
        }
    }

    /// Reads only `slice`'s part of every matrix.
    pub(super) fn with_slice(mut self, slice: Option<&'a TensorSlice>) -> Self {
        self.slice = slice;
        self
    }

    /// `part` of a matrix of `shape` (rows first; the whole file tensor's shape).
    fn matrix_part(
        &self,
        name: &str,
        is_layer: bool,
        shape: [usize; 2],
        part: &TensorPart,
    ) -> anyhow::Result<B::Matrix> {
        expect_shape(self.source, name, &shape)?;
        let tensor = self.source.read_part(name, part, &self.counter, is_layer)?;
        self.backend.matrix(tensor)
    }

    /// A vector's values, as f32 on the host.
    fn values(&self, name: &str, is_layer: bool, len: usize) -> anyhow::Result<Vec<f32>> {
        self.values_part(name, is_layer, len, &TensorPart::Whole)
    }

    /// `part` of a vector of `len` values, as f32 on the host.
    fn values_part(
        &self,
        name: &str,
        is_layer: bool,
        len: usize,
        part: &TensorPart,
    ) -> anyhow::Result<Vec<f32>> {
        expect_shape(self.source, name, &[len])?;
        self.source
            .read_part(name, part, &self.counter, is_layer)?
            .to_f32()
    }

    /// Rows `ranges` of a matrix or vector when this reader reads a member's slice; the
    /// whole tensor otherwise.
    fn rows(&self, ranges: Vec<std::ops::Range<usize>>) -> TensorPart {
        match self.slice {
            Some(_) => TensorPart::Rows(ranges),
            None => TensorPart::Whole,
        }
    }

    /// The member's query-head rows, KV-head rows and FFN columns (the whole model's
    /// without a slice).
    fn cuts(&self) -> Cuts {
        let c = self.config;
        let hd = c.head_dim;
        match self.slice {
            Some(slice) => {
                let kv = slice.kv_heads(c);
                Cuts {
                    q: slice.heads.start * hd..slice.heads.end * hd,
                    kv: kv.start * hd..kv.end * hd,
                    heads: slice.heads.len(),
                    kv_heads: kv.len(),
                    ffn: slice.ffn.clone(),
                }
            }
            None => Cuts {
                q: 0..c.n_heads * hd,
                kv: 0..c.n_kv_heads * hd,
                heads: c.n_heads,
                kv_heads: c.n_kv_heads,
                ffn: 0..c.intermediate_size,
            },
        }
    }

    /// A vector on the backend, `offset` added to every value.
    fn vector(
        &self,
        name: &str,
        is_layer: bool,
        len: usize,
        offset: f32,
    ) -> anyhow::Result<B::Vector> {
        let mut values = self.values(name, is_layer, len)?;
        if offset != 0.0 {
            for v in &mut values {
                *v += offset;
            }
        }
        self.backend.vector(values)
    }

    /// A layer's norm weights (the family's offset added).
    fn norm(&self, name: &str, len: usize) -> anyhow::Result<B::Vector> {
        self.vector(name, true, len, self.config.norm_offset)
    }

    /// Whether the output head is the embedding (the file holds no head of its own).
    pub(super) fn tied(&self) -> bool {
        !self.source.has(self.source.global_name(GlobalTensor::Head))
    }

    /// The token embedding table (the member's vocabulary rows of it).
    pub(super) fn embedding(&self) -> anyhow::Result<B::Matrix> {
        self.vocab_rows(GlobalTensor::Embedding)
    }

    /// The final norm, read before the head.
    pub(super) fn final_norm(&self) -> anyhow::Result<B::Vector> {
        let c = self.config;
        self.vector(
            self.source.global_name(GlobalTensor::FinalNorm),
            false,
            c.hidden_size,
            c.norm_offset,
        )
    }

    /// The output head, the member's vocabulary rows of it (files with tied embeddings
    /// have none).
    pub(super) fn head(&self) -> anyhow::Result<B::Matrix> {
        self.vocab_rows(GlobalTensor::Head)
    }

    /// A `[vocab, hidden]` global matrix (the embedding or the head): the member's
    /// vocabulary rows of it, or all of it without a slice.
    fn vocab_rows(&self, tensor: GlobalTensor) -> anyhow::Result<B::Matrix> {
        let c = self.config;
        let part = self.rows(
            self.slice
                .map(|s| vec![s.vocab.clone()])
                .unwrap_or_default(),
        );
        self.matrix_part(
            self.source.global_name(tensor),
            false,
            [c.vocab_size, c.hidden_size],
            &part,
        )
    }

    /// Decoder layer `layer`, with the bytes it read.
    pub(super) fn layer(&self, layer: usize) -> anyhow::Result<Layer<B>> {
        let c = self.config;
        let hidden = c.hidden_size;
        let read_before = self.counter.layer_bytes();
        let name = |t: LayerTensor| self.source.layer_name(layer, t);
        let cuts = self.cuts();
        let qkv = self.qkv(layer)?;
        let gate_up = self.gate_up(layer)?;
        // o and down: the member's columns of every row (an input split).
        let cols = |range: &std::ops::Range<usize>| match self.slice {
            Some(_) => TensorPart::Cols(range.clone()),
            None => TensorPart::Whole,
        };
        let o = self.matrix_part(
            &name(LayerTensor::Output),
            true,
            [hidden, c.n_heads * c.head_dim],
            &cols(&cuts.q),
        )?;
        let down = self.matrix_part(
            &name(LayerTensor::Down),
            true,
            [hidden, c.intermediate_size],
            &cols(&cuts.ffn),
        )?;
        let head_norm = |t: LayerTensor| self.norm(&name(t), c.head_dim);
        let post_norm = |t: LayerTensor| self.norm(&name(t), hidden);
        Ok(Layer {
            attn_norm: self.norm(&name(LayerTensor::AttnNorm), hidden)?,
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
                .then(|| post_norm(LayerTensor::PostAttnNorm))
                .transpose()?,
            ffn_norm: self.norm(&name(LayerTensor::FfnNorm), hidden)?,
            gate_up,
            down,
            post_ffn_norm: c
                .post_norms
                .then(|| post_norm(LayerTensor::PostFfnNorm))
                .transpose()?,
            ffn_width: cuts.ffn.len(),
            attention: AttentionShape {
                n_heads: cuts.heads,
                n_kv_heads: cuts.kv_heads,
                head_dim: c.head_dim,
                scale: c.attention_scale,
                window: c.layer_window(layer),
                softcap: None,
            },
            local_rope: c.rope_local.is_some() && c.layer_window(layer).is_some(),
            bytes: self.counter.layer_bytes() - read_before,
        })
    }

    /// A layer's q, k and v projections. Phi-3 files hold them stacked; the other
    /// families' hold them apart (a file missing one is told which), and they are stacked
    /// here when the backend can.
    fn qkv(&self, layer: usize) -> anyhow::Result<Qkv<B>> {
        let (c, b) = (self.config, self.backend);
        let hidden = c.hidden_size;
        let q_width = c.n_heads * c.head_dim;
        let kv_width = c.n_kv_heads * c.head_dim;
        let name = |t: LayerTensor| self.source.layer_name(layer, t);
        let cuts = self.cuts();
        let shift = |r: &std::ops::Range<usize>, by: usize| r.start + by..r.end + by;
        if c.architecture == Architecture::Phi3 || self.source.has(&name(LayerTensor::Qkv)) {
            // The member's q rows, then its k rows, then its v rows of the stacked matrix.
            let part = self.rows(vec![
                cuts.q.clone(),
                shift(&cuts.kv, q_width),
                shift(&cuts.kv, q_width + kv_width),
            ]);
            let matrix = self.matrix_part(
                &name(LayerTensor::Qkv),
                true,
                [q_width + 2 * kv_width, hidden],
                &part,
            )?;
            return Ok(Qkv::Fused { matrix, bias: None });
        }
        let (q_part, kv_part) = (
            self.rows(vec![cuts.q.clone()]),
            self.rows(vec![cuts.kv.clone()]),
        );
        let (q, k, v) = (
            self.matrix_part(&name(LayerTensor::Q), true, [q_width, hidden], &q_part)?,
            self.matrix_part(&name(LayerTensor::K), true, [kv_width, hidden], &kv_part)?,
            self.matrix_part(&name(LayerTensor::V), true, [kv_width, hidden], &kv_part)?,
        );
        let biases = if c.qkv_bias {
            Some([
                self.values_part(&name(LayerTensor::QBias), true, q_width, &q_part)?,
                self.values_part(&name(LayerTensor::KBias), true, kv_width, &kv_part)?,
                self.values_part(&name(LayerTensor::VBias), true, kv_width, &kv_part)?,
            ])
        } else {
            None
        };
        Ok(match b.stack(&[&q, &k, &v])? {
            Some(matrix) => Qkv::Fused {
                matrix,
                bias: biases
                    .map(|[q, k, v]| b.vector([q, k, v].concat()))
                    .transpose()?,
            },
            None => Qkv::Separate {
                q,
                k,
                v,
                biases: biases
                    .map(|[q, k, v]| -> anyhow::Result<_> {
                        Ok([b.vector(q)?, b.vector(k)?, b.vector(v)?])
                    })
                    .transpose()?,
            },
        })
    }

    /// A layer's gate and up projections: stacked in Phi-3 files, stacked here otherwise
    /// when the backend can.
    fn gate_up(&self, layer: usize) -> anyhow::Result<GateUp<B>> {
        let c = self.config;
        let (hidden, ffn) = (c.hidden_size, c.intermediate_size);
        let name = |t: LayerTensor| self.source.layer_name(layer, t);
        let cols = self.cuts().ffn;
        if c.architecture == Architecture::Phi3 && !self.source.has(&name(LayerTensor::Gate)) {
            // The member's gate rows, then its up rows of the stacked matrix.
            let part = self.rows(vec![cols.clone(), cols.start + ffn..cols.end + ffn]);
            let fused =
                self.matrix_part(&name(LayerTensor::GateUp), true, [2 * ffn, hidden], &part)?;
            return Ok(GateUp::Fused(fused));
        }
        let part = self.rows(vec![cols]);
        let gate = self.matrix_part(&name(LayerTensor::Gate), true, [ffn, hidden], &part)?;
        let up = self.matrix_part(&name(LayerTensor::Up), true, [ffn, hidden], &part)?;
        Ok(match self.backend.stack(&[&gate, &up])? {
            Some(fused) => GateUp::Fused(fused),
            None => GateUp::Separate(gate, up),
        })
    }
}

/// Where a member's slice cuts a layer: its q rows, its k and v rows, how many heads
/// those are, and its FFN columns.
struct Cuts {
    q: std::ops::Range<usize>,
    kv: std::ops::Range<usize>,
    heads: usize,
    kv_heads: usize,
    ffn: std::ops::Range<usize>,
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
