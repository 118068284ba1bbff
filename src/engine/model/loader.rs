//! Reading a shard's tensors onto a backend: one reader that checks every tensor's shape
//! against the config before it reads it, and a loader per part of the model (the
//! embedding, a layer, the final norm and head).
//!
//! A file that does not fit its own metadata is refused here, naming the tensor, on every
//! backend (a mismatch found later would surface deep in a matmul, or not at all).

use anyhow::bail;

use super::backend::Backend;
use super::config::{Architecture, ModelConfig};
use super::layer::{GateUp, Layer, Qkv};
use super::tensor_names::{GlobalTensor, LayerTensor};
use super::weights::{LoadCounter, WeightSource};
use crate::engine::cpu::attention::AttentionShape;

/// Reads checked tensors of one model file onto one backend, counting the bytes.
pub(super) struct TensorReader<'a, B: Backend> {
    pub(super) source: &'a WeightSource,
    pub(super) backend: &'a B,
    pub(super) config: &'a ModelConfig,
    pub(super) counter: LoadCounter,
}

impl<'a, B: Backend> TensorReader<'a, B> {
    pub(super) fn new(source: &'a WeightSource, backend: &'a B, config: &'a ModelConfig) -> Self {
        TensorReader {
            source,
            backend,
            config,
            counter: LoadCounter::default(),
        }
    }

    /// A matrix of `shape` (rows first).
    fn matrix(&self, name: &str, is_layer: bool, shape: [usize; 2]) -> anyhow::Result<B::Matrix> {
        expect_shape(self.source, name, &shape)?;
        let tensor = self.source.read(name, &self.counter, is_layer)?;
        self.backend.matrix(tensor)
    }

    /// A vector's values, as f32 on the host.
    fn values(&self, name: &str, is_layer: bool, len: usize) -> anyhow::Result<Vec<f32>> {
        expect_shape(self.source, name, &[len])?;
        self.source.read(name, &self.counter, is_layer)?.to_f32()
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

    /// The token embedding table.
    pub(super) fn embedding(&self) -> anyhow::Result<B::Matrix> {
        let c = self.config;
        self.matrix(
            self.source.global_name(GlobalTensor::Embedding),
            false,
            [c.vocab_size, c.hidden_size],
        )
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

    /// The output head (files with tied embeddings have none).
    pub(super) fn head(&self) -> anyhow::Result<B::Matrix> {
        let c = self.config;
        self.matrix(
            self.source.global_name(GlobalTensor::Head),
            false,
            [c.vocab_size, c.hidden_size],
        )
    }

    /// Decoder layer `layer`, with the bytes it read.
    pub(super) fn layer(&self, layer: usize) -> anyhow::Result<Layer<B>> {
        let c = self.config;
        let hidden = c.hidden_size;
        let read_before = self.counter.layer_bytes();
        let name = |t: LayerTensor| self.source.layer_name(layer, t);
        let qkv = self.qkv(layer)?;
        let gate_up = self.gate_up(layer)?;
        let o = self.matrix(
            &name(LayerTensor::Output),
            true,
            [hidden, c.n_heads * c.head_dim],
        )?;
        let down = self.matrix(
            &name(LayerTensor::Down),
            true,
            [hidden, c.intermediate_size],
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
            attention: AttentionShape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
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
        if c.architecture == Architecture::Phi3 || self.source.has(&name(LayerTensor::Qkv)) {
            let matrix = self.matrix(
                &name(LayerTensor::Qkv),
                true,
                [q_width + 2 * kv_width, hidden],
            )?;
            return Ok(Qkv::Fused { matrix, bias: None });
        }
        let (q, k, v) = (
            self.matrix(&name(LayerTensor::Q), true, [q_width, hidden])?,
            self.matrix(&name(LayerTensor::K), true, [kv_width, hidden])?,
            self.matrix(&name(LayerTensor::V), true, [kv_width, hidden])?,
        );
        let biases = if c.qkv_bias {
            Some([
                self.values(&name(LayerTensor::QBias), true, q_width)?,
                self.values(&name(LayerTensor::KBias), true, kv_width)?,
                self.values(&name(LayerTensor::VBias), true, kv_width)?,
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
        if c.architecture == Architecture::Phi3 && !self.source.has(&name(LayerTensor::Gate)) {
            let fused = self.matrix(&name(LayerTensor::GateUp), true, [2 * ffn, hidden])?;
            return Ok(GateUp::Fused(fused));
        }
        let gate = self.matrix(&name(LayerTensor::Gate), true, [ffn, hidden])?;
        let up = self.matrix(&name(LayerTensor::Up), true, [ffn, hidden])?;
        Ok(match self.backend.stack(&[&gate, &up])? {
            Some(fused) => GateUp::Fused(fused),
            None => GateUp::Separate(gate, up),
        })
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
