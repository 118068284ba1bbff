//! What travels between the members of a group: the leader's batches, the parts of each
//! collective operation, and word that a batch failed.

use super::batch::{BatchId, GroupBatch, WireDtype};

/// One message between two members.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A batch for a follower to run (leader to follower).
    Run(GroupBatch),
    /// The sender's part of step `op` of a batch's collective operations.
    Part {
        batch: BatchId,
        op: u32,
        values: Vec<f32>,
        dtype: WireDtype,
    },
    /// The batch failed on the sender; every member gives it up.
    Abort { batch: BatchId, reason: String },
}

impl Frame {
    /// The batch the frame belongs to.
    pub fn batch(&self) -> &BatchId {
        match self {
            Frame::Run(run) => &run.batch,
            Frame::Part { batch, .. } | Frame::Abort { batch, .. } => batch,
        }
    }
}
