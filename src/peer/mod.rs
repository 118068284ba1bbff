//! Handles on peers: one lifecycle-managed gRPC client per known node, and the links
//! between the members of a tensor-parallel group.

mod group_link;
mod grpc_peer;
mod link_stats;

pub use group_link::{
    GroupLinks, HEARTBEAT, LoopbackHubs, SILENCE, loopback_hubs, loopback_hubs_with,
};
pub use grpc_peer::{GrpcPeerHandle, PeerTimeouts};
pub use link_stats::LinkStats;
