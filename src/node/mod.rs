//! The node: every component as a member of one resource group, and the request flow
//! that runs across the ring.

mod flow;
mod group;
mod identity;

pub use flow::{
    DrainStatus, Flapping, FlowConfig, FlowStats, GenerateRequest, GenerationEvent,
    GenerationSummary, Replan, RequestFlow, describe, new_request_id, to_wire,
};
pub use group::{DiscoveryMode, Node, NodeConfig, members};
pub use identity::{NodeIdentity, default_data_home, validate_node_id};
