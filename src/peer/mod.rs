//! Handles on peers: one lifecycle-managed gRPC client per known node.

mod grpc_peer;

pub use grpc_peer::{GrpcPeerHandle, PeerTimeouts};
