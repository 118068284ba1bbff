//! The request flow's deadlines, retries and prompt chunking.

use std::time::Duration;

use crate::topology::Parallelism;

/// Deadlines and retries of the request flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowConfig {
    /// How long the origin waits for a step's result before it health-checks the plan's
    /// nodes: the floor of a deadline that follows the request's measured step times (see
    /// `deadline`). Nodes that do not answer are lost and the request is planned again;
    /// when all answer, it waits on.
    pub step_timeout: Duration,
    /// Extra time per prompt token for an epoch's first token (the prefill), before the
    /// request gives up on a ring whose nodes all answer but never serve it.
    pub prefill_time_per_token: Duration,
    /// Extra time for an epoch's first token, in which every node of the ring may have to
    /// load (or fetch) its shard's weights. Nodes that die meanwhile are still noticed at
    /// once: only the hard cap grows.
    pub load_allowance: Duration,
    /// The longest a step may wait while every node of its plan answers health checks: a
    /// ring that is alive but never serves this request still fails it.
    pub busy_cap: Duration,
    /// Prompt tokens per step: longer prompts go through the ring in chunks, which the
    /// shards interleave with other requests' decoding.
    pub prefill_chunk: usize,
    /// How many times one request may be planned again after losing nodes, before it
    /// fails.
    pub max_replans: usize,
    /// How plans split the model unless a request asks otherwise (`--parallelism`).
    pub parallelism: Parallelism,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            step_timeout: Duration::from_millis(250),
            prefill_time_per_token: Duration::from_millis(20),
            load_allowance: Duration::from_secs(60),
            busy_cap: Duration::from_secs(300),
            prefill_chunk: 256,
            max_replans: 3,
            parallelism: Parallelism::default(),
        }
    }
}
