//! Handles on peers: one lifecycle-managed gRPC client per known node.

mod grpc_peer;
mod link_stats;

pub use grpc_peer::{GrpcPeerHandle, PeerTimeouts};
pub use link_stats::LinkStats;
