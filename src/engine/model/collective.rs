//! What a tensor-parallel slice asks of its group while it runs a batch: the decoder calls
//! these at fixed points of every pass, so every member of a group makes the same calls in
//! the same order (see [`super::slice`]).
//!
//! The engine knows nothing of how the values travel: `crate::engine::group` implements
//! this over a node's links to its peers (or over in-process channels).

/// A member's view of its group during one batch.
pub trait Collective {
    /// Adds every member's `values` (the same length on each), in member order, and
    /// leaves the sum in `values` on every member: the same bits on all of them.
    fn all_reduce(&mut self, values: &mut [f32]) -> anyhow::Result<()>;

    /// Every member's `part`, in member order, on the leader (member 0); None on the
    /// others.
    fn gather(&mut self, part: Vec<f32>) -> anyhow::Result<Option<Vec<Vec<f32>>>>;
}
