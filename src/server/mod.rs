//! The gRPC server of a node: the `NodeService` (proto/node.proto) and the standard
//! `grpc.health.v1` service, served by a lifecycle-managed resource.

mod grpc_server;
mod handler;
mod incoming;
mod limits;
mod service;

pub use grpc_server::GrpcServer;
pub use handler::{NodeHandler, WeightStream};
pub use limits::{DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_CONTROL_BYTES, MessageKind, MessageLimits};
pub use service::{MAX_BATCH_ITEMS, NodeService};
