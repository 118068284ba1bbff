//! Errors of the lifecycle layer.

use std::time::Duration;

use super::ResourceState;

/// Why a lifecycle call did not succeed.
///
/// Cloneable so that one initialize attempt can hand the same error to every caller that
/// shared it. Every variant names the resource, so an error that travels far (through a
/// gRPC status or an HTTP body) still says where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The resource is in a state where the call is refused (closed, closing, or degraded
    /// and not recoverable).
    #[error("resource '{id}' ({kind}) is {state}: {reason}")]
    Unavailable {
        id: String,
        kind: String,
        state: ResourceState,
        reason: String,
    },
    /// The resource's own initialize returned an error (or panicked).
    #[error("initialize of resource '{id}' ({kind}) failed: {message}")]
    InitializeFailed {
        id: String,
        kind: String,
        message: String,
    },
    /// Initialize did not finish within its configured timeout.
    #[error("initialize of resource '{id}' ({kind}) timed out after {timeout:?}")]
    InitializeTimeout {
        id: String,
        kind: String,
        timeout: Duration,
    },
    /// The initialize attempt was abandoned because cleanup or reset took over.
    #[error("initialize of resource '{id}' ({kind}) was cancelled: cleanup or reset took over")]
    Cancelled { id: String, kind: String },
    /// The resource's cleanup returned an error or timed out; it is Closed all the same.
    #[error("cleanup of resource '{id}' ({kind}) failed: {message}")]
    CleanupFailed {
        id: String,
        kind: String,
        message: String,
    },
    /// `reconnect` was asked of a resource that has no connection to re-establish.
    #[error("resource '{id}' ({kind}) cannot reconnect: it has no connection")]
    ReconnectUnsupported { id: String, kind: String },
    /// The resource's reconnect returned an error or timed out.
    #[error("reconnect of resource '{id}' ({kind}) failed: {message}")]
    ReconnectFailed {
        id: String,
        kind: String,
        message: String,
    },
    /// A reconnect finished after an initialize or reset had replaced the instance it
    /// worked on: its outcome says nothing about the instance there now, so it was ignored.
    #[error(
        "reconnect of resource '{id}' ({kind}) was overtaken: an initialize or reset replaced the instance it worked on"
    )]
    ReconnectSuperseded { id: String, kind: String },
}

impl ResourceError {
    /// The id of the resource the error is about.
    pub fn resource_id(&self) -> &str {
        match self {
            ResourceError::Unavailable { id, .. }
            | ResourceError::InitializeFailed { id, .. }
            | ResourceError::InitializeTimeout { id, .. }
            | ResourceError::Cancelled { id, .. }
            | ResourceError::CleanupFailed { id, .. }
            | ResourceError::ReconnectUnsupported { id, .. }
            | ResourceError::ReconnectFailed { id, .. }
            | ResourceError::ReconnectSuperseded { id, .. } => id,
        }
    }
}
