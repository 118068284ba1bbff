//! One decoder layer: its weights as the loader stacks them, and its forward pass, written
//! once for every family (the config's switches pick biases, q/k norms, extra norms, the
//! activation, the window and the rope).

use anyhow::Context;

use super::backend::{Backend, SeqRows};
use super::collective::Collective;
use super::config::ModelConfig;
use crate::engine::cpu::attention::AttentionShape;

/// q, k and v projections: one stacked matrix when the file's layout allows it.
pub(super) enum Qkv<B: Backend> {
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
pub(super) enum GateUp<B: Backend> {
    Fused(B::Matrix),
    Separate(B::Matrix, B::Matrix),
}

/// One decoder layer's weights and shape.
pub(super) struct Layer<B: Backend> {
    pub(super) attn_norm: B::Vector,
    pub(super) qkv: Qkv<B>,
    pub(super) q_norm: Option<B::Vector>,
    pub(super) k_norm: Option<B::Vector>,
    pub(super) o: B::Matrix,
    pub(super) post_attn_norm: Option<B::Vector>,
    pub(super) ffn_norm: B::Vector,
    pub(super) gate_up: GateUp<B>,
    pub(super) down: B::Matrix,
    pub(super) post_ffn_norm: Option<B::Vector>,
    /// FFN columns this layer holds (all of them, or a tensor-parallel member's).
    pub(super) ffn_width: usize,
    /// Its attention: every head, or a tensor-parallel member's heads.
    pub(super) attention: AttentionShape,
    /// Whether this layer uses the local (sliding-window) rope.
    pub(super) local_rope: bool,
    /// Bytes of this layer's tensors as read from the model file.
    pub(super) bytes: u64,
}

impl<B: Backend> Layer<B> {
    /// Runs the layer over a batch's rows: attention (each sequence over its own cache)
    /// and the feed-forward block, each with its residual. `rope` is the model's global
    /// rope, `rope_local` its sliding-window one, if it has one. A tensor-parallel
    /// member's attention output and feed-forward output are partial sums: `group` adds
    /// the members' (the layer's two all-reduces) before the norms and residuals that
    /// follow them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        b: &B,
        c: &ModelConfig,
        (rope, rope_local): (&B::Rope, Option<&B::Rope>),
        x: B::Act,
        seqs: &[SeqRows],
        kvs: &mut [&mut B::Kv],
        group: &mut Option<&mut dyn Collective>,
    ) -> anyhow::Result<B::Act> {
        let layer = self;
        let eps = c.rms_norm_eps as f32;
        let h = b.rms_norm(&x, &layer.attn_norm, eps)?;
        let q_width = layer.attention.n_heads * c.head_dim;
        let kv_width = layer.attention.n_kv_heads * c.head_dim;
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
        let rope = match (rope_local, layer.local_rope) {
            (Some(local), true) => local,
            _ => rope,
        };
        let q = b.apply_rope(q, c.head_dim, rope, seqs)?;
        let k = b.apply_rope(k, c.head_dim, rope, seqs)?;
        let attn = b.attention(&q, &k, &v, seqs, kvs, &layer.attention)?;
        let mut o = b.linear(&attn, &[(&layer.o, None)])?.remove(0);
        if let Some(group) = group {
            o = all_reduce(b, o, &mut **group).context("the attention output's all-reduce")?;
        }
        if let Some(norm) = &layer.post_attn_norm {
            o = b.rms_norm(&o, norm, eps)?;
        }
        let x = b.add(x, &o)?;
        let h = b.rms_norm(&x, &layer.ffn_norm, eps)?;
        let a = match &layer.gate_up {
            GateUp::Fused(m) => {
                let fused = b.linear(&h, &[(m, None)])?.remove(0);
                b.gated_halves(c.activation, fused, layer.ffn_width)?
            }
            GateUp::Separate(g, u) => {
                let mut out = b.linear(&h, &[(g, None), (u, None)])?.into_iter();
                let (gate, up) = (out.next().context("gate")?, out.next().context("up")?);
                b.gated(c.activation, &gate, &up)?
            }
        };
        let mut d = b.linear(&a, &[(&layer.down, None)])?.remove(0);
        if let Some(group) = group {
            d = all_reduce(b, d, &mut **group).context("the feed-forward output's all-reduce")?;
        }
        if let Some(norm) = &layer.post_ffn_norm {
            d = b.rms_norm(&d, norm, eps)?;
        }
        b.add(x, &d)
    }
}

/// The sum of every member's `x` (see [`Collective::all_reduce`]).
pub(super) fn all_reduce<B: Backend>(
    b: &B,
    x: B::Act,
    group: &mut dyn Collective,
) -> anyhow::Result<B::Act> {
    let (rows, cols) = b.shape(&x);
    let mut values = b.to_rows(&x)?;
    drop(x);
    group.all_reduce(&mut values)?;
    b.from_rows(values, rows, cols)
}
