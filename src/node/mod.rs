//! The node's own concerns: its identity (data directory, node id) and the request flow
//! that runs across the ring. The assembly of a whole node lives in `crate::app`.

mod flow;
mod identity;

pub use flow::{
    DrainStatus, FailureKind, Flapping, FlowConfig, FlowError, FlowStats, GenerateRequest,
    GenerationEvent, GenerationSummary, Replan, RequestFlow, describe, new_request_id,
};
pub use identity::{NodeIdentity, default_data_home, validate_node_id};
