//! What a tensor-parallel group runs: where (the layer range, the members and each one's
//! slice) and which rows, as the leader hands a batch to its followers.

use std::fmt;

use crate::engine::model::shard_io::ShardInput;
use crate::engine::model::slice::TensorSlice;

/// How partial sums travel between members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WireDtype {
    /// Exact: what a member sends is what it adds.
    #[default]
    F32,
    /// Half the bytes; every member rounds its own part to f16 too, so that all add the
    /// same values (and keep the same bits), at some cost in agreement with one process.
    F16,
}

impl WireDtype {
    pub fn name(self) -> &'static str {
        match self {
            WireDtype::F32 => "f32",
            WireDtype::F16 => "f16",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "f32" => Ok(WireDtype::F32),
            "f16" => Ok(WireDtype::F16),
            other => anyhow::bail!("unknown wire dtype {other:?} (f32 or f16)"),
        }
    }
}

/// A group's layout: its members (node ids, leader first) and each one's slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupPlacement {
    pub members: Vec<String>,
    pub slices: Vec<TensorSlice>,
    pub wire: WireDtype,
}

impl GroupPlacement {
    /// `node_id`'s index in the group.
    pub fn member(&self, node_id: &str) -> Option<usize> {
        self.members.iter().position(|m| m == node_id)
    }
}

/// One batch of a group, named by its leader and the leader's count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchId {
    pub leader: String,
    pub seq: u64,
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.leader, self.seq)
    }
}

/// One request's rows of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub request_id: String,
    /// Its cache's length before this batch.
    pub position: usize,
    /// Positions to reserve when the request starts on this member.
    pub reserve_positions: usize,
    pub input: ShardInput,
}

/// A batch as the leader hands it to every follower: they run the same rows through their
/// slices of the same layers, in the same order.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupBatch {
    pub batch: BatchId,
    pub model_id: String,
    pub start_layer: usize,
    pub end_layer: usize,
    pub placement: GroupPlacement,
    pub rows: Vec<GroupRow>,
}

impl GroupBatch {
    /// The requests whose rows the batch holds.
    pub fn request_ids(&self) -> Vec<String> {
        self.rows.iter().map(|r| r.request_id.clone()).collect()
    }
}
