//! What the decoder needs from the hardware it runs on.
//!
//! The decoder ([`super::shard_model`]) is written once, against this trait; a backend supplies
//! the storage and the operations. Two exist: [`crate::engine::cpu::CpuBackend`] (our own kernels:
//! row-invariant, so batching and re-running a prompt never change a result) and
//! [`super::candle_backend::CandleBackend`] (candle's tensors and kernels, for CUDA and
//! Metal, and on the CPU as an independent check of the first).
//!
//! Activations are 2-D: one row per token of the batch, rows of several sequences one
//! after another ([`SeqRows`] says which rows belong to which sequence).

use super::config::RopeSpec;
use super::weights::RawTensor;
use crate::engine::cpu::attention::AttentionShape;
use crate::engine::cpu::ops::Activation;

/// The rows of one sequence within a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRows {
    /// Its first row in the batch.
    pub start: usize,
    /// How many rows (tokens) it has in this batch.
    pub len: usize,
    /// The position of its first row (the tokens its cache holds before this batch).
    pub position: usize,
}

/// A place where a decoder runs.
pub trait Backend: Send + Sync + Sized + 'static {
    /// Activations: rows × width.
    type Act: Send;
    /// A weight matrix for `x · Wᵀ`.
    type Matrix: Send + Sync;
    /// A vector (norm weights, biases).
    type Vector: Send + Sync;
    /// A rotary embedding table.
    type Rope: Send + Sync;
    /// One layer's keys and values for one sequence.
    type Kv: Send + Default;

    /// What the engine info reports: `cpu (avx512-vnni, int16)`, `cuda:0`.
    fn describe(&self) -> String;

    fn matrix(&self, tensor: RawTensor) -> anyhow::Result<Self::Matrix>;
    fn vector(&self, values: Vec<f32>) -> anyhow::Result<Self::Vector>;
    /// Matrices of the same width stacked into one (so that one matmul serves all);
    /// None when their storage cannot be stacked.
    fn stack(&self, parts: &[&Self::Matrix]) -> anyhow::Result<Option<Self::Matrix>>;
    fn rows_of(&self, matrix: &Self::Matrix) -> usize;
    fn rope(&self, spec: &RopeSpec, max_positions: usize) -> anyhow::Result<Self::Rope>;

    // The backend builds the activation (it is no conversion of the backend itself).
    #[allow(clippy::wrong_self_convention)]
    fn from_rows(&self, values: Vec<f32>, rows: usize, cols: usize) -> anyhow::Result<Self::Act>;
    fn to_rows(&self, x: &Self::Act) -> anyhow::Result<Vec<f32>>;
    fn shape(&self, x: &Self::Act) -> (usize, usize);
    /// Rows `ids` of the embedding table, times `scale`.
    fn embed(
        &self,
        table: &Self::Matrix,
        ids: &[u32],
        scale: Option<f32>,
    ) -> anyhow::Result<Self::Act>;
    fn rms_norm(&self, x: &Self::Act, weight: &Self::Vector, eps: f32)
    -> anyhow::Result<Self::Act>;
    /// RMS norm over each `weight.len()`-wide piece of every row (q/k norms per head).
    fn head_norm(&self, x: Self::Act, weight: &Self::Vector, eps: f32)
    -> anyhow::Result<Self::Act>;
    /// `x · Wᵢᵀ + bᵢ` for every matrix, sharing `x`.
    fn linear(
        &self,
        x: &Self::Act,
        weights: &[(&Self::Matrix, Option<&Self::Vector>)],
    ) -> anyhow::Result<Vec<Self::Act>>;
    /// Splits the columns of `x` into pieces of the given widths.
    fn split(&self, x: Self::Act, widths: &[usize]) -> anyhow::Result<Vec<Self::Act>>;
    /// Rotates every `head_dim`-wide head of each row by that row's position.
    fn apply_rope(
        &self,
        x: Self::Act,
        head_dim: usize,
        rope: &Self::Rope,
        seqs: &[SeqRows],
    ) -> anyhow::Result<Self::Act>;
    /// Appends each sequence's new keys and values to its cache, then attends every row
    /// of `q` over its sequence's cache. `caches[i]` belongs to `seqs[i]`.
    fn attention(
        &self,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        seqs: &[SeqRows],
        caches: &mut [&mut Self::Kv],
        shape: &AttentionShape,
    ) -> anyhow::Result<Self::Act>;
    /// `act(gate) · up`.
    fn gated(
        &self,
        activation: Activation,
        gate: &Self::Act,
        up: &Self::Act,
    ) -> anyhow::Result<Self::Act>;
    /// `act(g) · u` where each row of `fused` is `g` then `u`, `width` values each (gate
    /// and up stacked in one matrix); by default through [`Self::split`].
    fn gated_halves(
        &self,
        activation: Activation,
        fused: Self::Act,
        width: usize,
    ) -> anyhow::Result<Self::Act> {
        let mut parts = self.split(fused, &[width, width])?.into_iter();
        match (parts.next(), parts.next()) {
            (Some(gate), Some(up)) => self.gated(activation, &gate, &up),
            _ => anyhow::bail!("a split into two halves gave fewer parts"),
        }
    }
    /// `x + y` (x is consumed: backends may add in place).
    fn add(&self, x: Self::Act, y: &Self::Act) -> anyhow::Result<Self::Act>;
    /// The rows `rows` of `x`, in that order.
    fn select_rows(&self, x: &Self::Act, rows: &[usize]) -> anyhow::Result<Self::Act>;
    /// Bytes a layer cache holds.
    fn kv_bytes(kv: &Self::Kv) -> usize;
    /// Drops cached positions from `positions` on (undoing a failed step).
    fn kv_truncate(
        &self,
        kv: &mut Self::Kv,
        positions: usize,
        shape: &AttentionShape,
    ) -> anyhow::Result<()>;
}
