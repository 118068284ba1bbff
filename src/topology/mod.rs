//! What the cluster looks like: each node's capabilities, and how a model's layers are
//! split among the nodes of the ring.

mod capabilities;
mod partition;

pub use capabilities::DeviceCapabilities;
pub use partition::{
    MAX_PLAN_ENTRIES, NodeWeight, Partition, PartitionEntry, plan_partition, plan_partition_fitting,
};
