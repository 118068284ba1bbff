//! The seven lifecycle states of a resource.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a resource is in its life.
///
/// ```text
/// Uninitialized → Initializing → Ready ⇄ Degraded
///                      ↓           ↓        ↓
///                    Error  ←──────┴────────┘
/// any (but Closed) → Closing → Closed
/// ```
///
/// `Ready` and `Degraded` are the two states in which the resource's operations may be
/// reached; `ensure_ready` turns every other state into either one of those or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceState {
    /// Created, nothing acquired yet.
    Uninitialized,
    /// An initialize attempt is in flight; concurrent callers share it.
    Initializing,
    /// Initialized and passing its health checks.
    Ready,
    /// Initialized, but its last health check (or a transient operation error) failed.
    Degraded,
    /// Initialize failed, timed out, or too many health checks failed in a row.
    Error,
    /// Cleanup is running.
    Closing,
    /// Cleaned up; it can only come back through `reset`.
    Closed,
}

impl ResourceState {
    /// Every state, in lifecycle order (used for stable reports).
    pub const ALL: [ResourceState; 7] = [
        ResourceState::Uninitialized,
        ResourceState::Initializing,
        ResourceState::Ready,
        ResourceState::Degraded,
        ResourceState::Error,
        ResourceState::Closing,
        ResourceState::Closed,
    ];

    /// The name used in reports, the admin API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceState::Uninitialized => "uninitialized",
            ResourceState::Initializing => "initializing",
            ResourceState::Ready => "ready",
            ResourceState::Degraded => "degraded",
            ResourceState::Error => "error",
            ResourceState::Closing => "closing",
            ResourceState::Closed => "closed",
        }
    }

    /// Ready or Degraded: initialized and not closing.
    pub fn is_usable(self) -> bool {
        matches!(self, ResourceState::Ready | ResourceState::Degraded)
    }

    /// Degraded or Error: what the monitor calls a problem.
    pub fn is_problem(self) -> bool {
        matches!(self, ResourceState::Degraded | ResourceState::Error)
    }

    /// Closing or Closed: the resource is going or gone.
    pub fn is_closed(self) -> bool {
        matches!(self, ResourceState::Closing | ResourceState::Closed)
    }
}

impl fmt::Display for ResourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
