//! The node service's wire types (generated from proto/node.proto) and the conversions
//! between them and the engine's types, with the checks that keep bad input out.

pub mod request_ids;
mod tensor;

pub use tensor::{TensorError, decode_hidden, decode_tensor, encode_hidden, encode_tensor};

/// Generated from proto/node.proto by build.rs.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("exo.node.v1");
}

/// The largest gRPC message a node sends, and accepts as a client (acks, topology, weight
/// chunks): far above a real hidden state (a 2,048-token prompt of a 4,096-wide model in
/// f32 is 32 MiB), well below memory trouble. What a node's server accepts is capped per
/// kind, lower (`crate::server::MessageLimits`).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
