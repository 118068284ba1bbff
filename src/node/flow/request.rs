//! What the API asks of the flow and what it hears back: a request to generate (its
//! prompt already tokenized), the events of its generation, and the summary at its end.

use serde::Serialize;

use super::continuation::Replan;
use super::failure::FlowError;
use crate::engine::serve::sampling::TokenLogprobs;
use crate::engine::{FinishReason, SamplingParams};
use crate::topology::Partition;

/// What the origin is asked to generate (the prompt is already tokenized).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Go on past end-of-sequence tokens, to exactly `max_tokens` (benchmarks).
    pub ignore_eos: bool,
    /// Some(k): report each generated token's logprob and its k most likely
    /// alternatives (as [`GenerationEvent::Logprobs`]).
    pub top_logprobs: Option<u32>,
    /// The id the request goes by on every node (in logs and gRPC metadata); the origin
    /// makes one when empty.
    pub request_id: Option<String>,
    /// A grammar (llguidance's Lark dialect) every generated token must follow
    /// (structured output, tool calls); the last shard masks the logits with it.
    pub grammar: Option<String>,
    /// How to split the model for this request (a request's `parallelism` field, for
    /// benchmarks); None: the node's `--parallelism`.
    pub parallelism: Option<crate::topology::Parallelism>,
}

impl GenerateRequest {
    /// A plain request: no stop strings, stopping at end-of-sequence, no logprobs, no
    /// grammar, and an id the origin makes.
    pub fn new(prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> Self {
        GenerateRequest {
            prompt,
            max_tokens,
            sampling,
            stop: Vec::new(),
            ignore_eos: false,
            top_logprobs: None,
            request_id: None,
            grammar: None,
            parallelism: None,
        }
    }
}

/// Timings and counts of a finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationSummary {
    pub request_id: String,
    pub finish: FinishReason,
    /// The stop string that ended it, if one did (`finish` is then `Stop`).
    pub stop_string: Option<String>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// The plan of the last epoch.
    pub partition: Partition,
    /// Each time the request was planned again after losing nodes.
    pub replans: Vec<Replan>,
}

impl GenerationSummary {
    pub fn decode_tok_s(&self) -> f64 {
        self.completion_tokens.saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// What the origin streams to whoever asked.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    /// Planned and sent on its way.
    Started {
        request_id: String,
        partition: Partition,
    },
    /// A node of the plan was lost and the request goes on over a new plan (sent with
    /// the first token of the new epoch).
    Replanned(Replan),
    /// Text that is safe to show.
    Text(String),
    /// The logprobs of a generated token (only when asked for), sent before the text that
    /// token completes; end-of-sequence tokens have none.
    Logprobs(TokenLogprobs),
    Finished(GenerationSummary),
    /// The request failed; its kind decides the client's status (see `failure`).
    Failed(FlowError),
}
