//! Why a request failed, kept to the client: the API answers each kind with its own status
//! (docs/DESIGN.md §4d), so that a client can tell its own mistake (400) from a node that
//! is leaving (409: ask another), a cluster that cannot hold the model or lost its nodes
//! (503) and a ring that made no progress (504).

use serde::Serialize;

/// The kinds of failure a generation ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The request itself cannot be served (an empty prompt, one longer than the
    /// context, bad sampling settings): the client's to fix.
    InvalidRequest,
    /// This node is draining and takes no new requests: another node may.
    Draining,
    /// The nodes there are (or are left) cannot hold the model.
    ClusterTooSmall,
    /// Nodes of the request's ring were lost more often than re-plans allow.
    PeerLost,
    /// This node's engine failed (and no plan could do without it).
    EngineFailed,
    /// The ring answered but produced no result in time.
    TimedOut,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InvalidRequest => "invalid_request",
            FailureKind::Draining => "node_draining",
            FailureKind::ClusterTooSmall => "cluster_too_small",
            FailureKind::PeerLost => "peer_lost",
            FailureKind::EngineFailed => "engine_failed",
            FailureKind::TimedOut => "timed_out",
        }
    }
}

/// A failure of a known kind. The flow's code returns it inside `anyhow` errors (context
/// may wrap it); [`FlowError::of`] finds it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    pub kind: FailureKind,
    pub message: String,
}

impl FlowError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        FlowError {
            kind,
            message: message.into(),
        }
    }

    /// `error` as the client hears it: the kind found in its chain (an error of no known
    /// kind is the engine's: the node failed at something it should not have), and the
    /// whole chain as the message.
    pub fn of(error: &anyhow::Error) -> Self {
        let kind = error
            .chain()
            .find_map(|e| e.downcast_ref::<FlowError>())
            .map_or(FailureKind::EngineFailed, |e| e.kind);
        FlowError::new(kind, format!("{error:#}"))
    }
}

impl std::fmt::Display for FlowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FlowError {}

/// `Err(FlowError)` of `kind` as an `anyhow` error, for `?`.
pub(super) fn fail<T>(kind: FailureKind, message: impl Into<String>) -> anyhow::Result<T> {
    Err(FlowError::new(kind, message).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_survives_context_and_unknown_errors_are_the_engines() {
        let wrapped = fail::<()>(FailureKind::ClusterTooSmall, "too small")
            .context("after losing b")
            .unwrap_err();
        let found = FlowError::of(&wrapped);
        assert_eq!(found.kind, FailureKind::ClusterTooSmall);
        assert_eq!(found.message, "after losing b: too small");
        let plain = anyhow::anyhow!("the batcher is gone");
        assert_eq!(FlowError::of(&plain).kind, FailureKind::EngineFailed);
    }
}
