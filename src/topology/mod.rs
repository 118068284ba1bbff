//! What the cluster looks like: each node's capabilities, and how a model's layers are
//! split among the nodes of the ring (or within layers among a tensor-parallel group).

mod capabilities;
mod parallelism;
mod partition;

pub use capabilities::DeviceCapabilities;
pub use parallelism::{GroupCandidate, Parallelism, describe_entry, plan_tensor_pair};
pub use partition::{
    GroupMember, MAX_GROUP_MEMBERS, MAX_PLAN_ENTRIES, NodeWeight, Partition, PartitionEntry,
    plan_partition, plan_partition_fitting,
};
