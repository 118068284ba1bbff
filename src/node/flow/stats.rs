//! The flow's counters (the admin API, `/metrics`).

use serde::Serialize;

/// Counters for the admin API.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlowStats {
    pub requests_started: u64,
    pub requests_finished: u64,
    pub requests_failed: u64,
    pub requests_cancelled: u64,
    pub steps_run: u64,
    pub step_errors: u64,
    /// Steps and results refused for naming a node that has not proven the cluster key.
    pub plans_refused: u64,
    /// Requests planned again after losing a node (each re-plan counts).
    pub replans: u64,
    /// Steps of new requests refused while this node drains.
    pub refused_draining: u64,
    /// Steps here that named a prefix this node's prefix cache did not hold.
    pub prefix_misses: u64,
    /// Requests this node originated that started from a cached prefix, and the prompt
    /// tokens they did not prefill.
    pub prefix_reuses: u64,
    pub prefix_reused_tokens: u64,
}
