//! Tensor-parallel groups as the engine runs them: several nodes hold slices of the same
//! layers (`crate::engine::model::slice`) and run every batch together.
//!
//! The leader (member 0) forms batches with its batcher as any shard does; for each one
//! it hands the rows to its followers ([`batch`]: a [`GroupBatch`] in a `Run`
//! [`frame`]), and every member runs them through its slice, adding partial sums with the
//! others twice per layer ([`member`]: all-reduces and the head's gather). Frames wait in
//! a per-node [`hub`] until the member running their batch takes them; the node supplies
//! the [`Wire`] they leave by (gRPC streams between nodes, `crate::node`), or
//! [`local_wire`] joins members inside one process. One all-reduce serves a whole batch,
//! however many rows it holds.

pub mod batch;
pub mod frame;
pub mod hub;
pub mod local_wire;
pub mod member;

pub use batch::{BatchId, GroupBatch, GroupPlacement, GroupRow, WireDtype};
pub use frame::Frame;
pub use hub::{GroupHub, Wire};
pub use member::MemberCollective;
