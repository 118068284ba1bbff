//! The node service's wire types (generated from proto/node.proto) and, beside them, both
//! directions of every conversion between them and the types the rest of the node uses,
//! with the checks that keep bad input out: a change to node.proto touches this folder.
//!
//! - [`context`]: a request's context (every message of a request carries one);
//! - [`step`], [`result`]: a shard's input, and a step's outcome on its way to the origin;
//! - `tensor`: tensors and hidden states as raw bytes;
//! - `plan`, `capabilities`: partition plans and a node's capabilities;
//! - [`weights`]: weight transfers (byte ranges asked for, checksummed chunks);
//! - [`request_ids`]: the request ids a call carries in its gRPC metadata.

mod capabilities;
pub mod context;
pub mod group_frame;
mod plan;
pub mod request_ids;
pub mod result;
pub mod step;
mod tensor;
pub mod weights;

pub use context::{ConstraintSpec, Recipient, ValidatedContext};
pub use result::{StepOutcome, result_from_wire, result_to_wire};
pub use step::{StepInput, step_from_wire, step_to_wire};
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
