//! A request's context on the wire, both ways. Every message of a request carries it; a
//! node takes one from the wire only after checking it: a request id, a well-formed plan
//! that includes this node (or, for a result, this node as the origin), and sampling
//! parameters it can run.

use super::pb;
use crate::engine::SamplingParams;
use crate::engine::serve::prefix_cache::BLOCK_TOKENS;
use crate::engine::serve::sampling::MAX_TOP_LOGPROBS;
use crate::topology::Partition;

/// A request's context after its checks: the plan is well formed and includes this node.
#[derive(Debug, Clone)]
pub struct ValidatedContext {
    pub request_id: String,
    pub origin_node_id: String,
    pub origin_address: String,
    pub plan: Partition,
    /// This node's index in the plan.
    pub index: usize,
    pub sampling: SamplingParams,
    pub position: usize,
    pub step: u64,
    /// Whether the last shard samples a token after this step.
    pub sample: bool,
    /// Positions the request may reach (reserved in KV budgets when it starts).
    pub reserve_positions: usize,
    /// The index of the token this step samples among the generated ones.
    pub token_index: u64,
    /// Some(k) when the client asked for logprobs: the last shard returns each token's
    /// log-probability and its k most likely alternatives.
    pub top_logprobs: Option<u32>,
    /// On a request's first step at a position > 0: the chain hashes of the blocks of
    /// [0, position), which every shard restores from its prefix cache.
    pub prefix_blocks: Vec<u64>,
    /// The grammar that masks this request's sampled tokens, if any.
    pub constraint: Option<ConstraintSpec>,
}

/// What the last shard needs to constrain a request's tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct ConstraintSpec {
    /// The grammar (llguidance's Lark dialect), sent with an epoch's first sampled step
    /// only; None on the others (the last shard keeps the matcher it built).
    pub grammar: Option<String>,
    /// With the grammar: tokens already generated under it (a re-planned request).
    pub generated: Vec<u32>,
}

/// Which side of a request a message reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// A node of the plan (steps): the plan must include it.
    Shard,
    /// The request's origin (results): it must be the origin; it may not be in the plan.
    Origin,
}

impl ValidatedContext {
    /// The context as it travels.
    pub fn to_wire(&self) -> pb::RequestContext {
        let constraint = self.constraint.as_ref();
        pb::RequestContext {
            prefix_blocks: self.prefix_blocks.clone(),
            constrained: constraint.is_some(),
            grammar: constraint
                .and_then(|c| c.grammar.clone())
                .unwrap_or_default(),
            constrained_tokens: constraint.map(|c| c.generated.clone()).unwrap_or_default(),
            request_id: self.request_id.clone(),
            origin_node_id: self.origin_node_id.clone(),
            origin_address: self.origin_address.clone(),
            plan: Some(self.plan.to_wire()),
            sampling: Some(pb::SamplingParams {
                temperature: self.sampling.temperature,
                top_p: self.sampling.top_p,
                top_k: self.sampling.top_k as u32,
                seed: self.sampling.seed,
            }),
            position: self.position as u32,
            step: self.step,
            sample: self.sample,
            reserve_positions: self.reserve_positions as u32,
            token_index: self.token_index,
            top_logprobs: self.top_logprobs,
        }
    }

    /// The context as a result carries it back to the origin: what only the shards need
    /// (the prefix's hashes, the grammar) stays behind.
    pub fn to_wire_for_result(&self) -> pb::RequestContext {
        let mut wire = self.to_wire();
        wire.prefix_blocks.clear();
        wire.grammar.clear();
        wire.constrained_tokens.clear();
        wire
    }

    /// Checks a received context for node `node_id`, the `recipient` of its message; Err
    /// says what is wrong with it.
    pub fn from_wire(
        context: Option<pb::RequestContext>,
        node_id: &str,
        recipient: Recipient,
    ) -> Result<Self, String> {
        let context = context.ok_or("the message has no request context")?;
        if context.request_id.is_empty() {
            return Err("the request context has no request id".into());
        }
        let wire_plan = context
            .plan
            .ok_or("the request context has no partition plan")?;
        let plan =
            Partition::from_wire(&wire_plan).map_err(|e| format!("bad partition plan: {e:#}"))?;
        let index = match recipient {
            Recipient::Origin => {
                if context.origin_node_id != node_id {
                    return Err(format!(
                        "a result for request {} was sent to node {node_id}, but its origin is {}",
                        context.request_id, context.origin_node_id
                    ));
                }
                plan.entry(node_id).map_or(usize::MAX, |(i, _)| i)
            }
            Recipient::Shard => plan.entry(node_id).map(|(i, _)| i).ok_or_else(|| {
                format!(
                    "the partition plan of request {} does not include node {node_id}",
                    context.request_id
                )
            })?,
        };
        let sampling = sampling_from_wire(context.sampling.unwrap_or_default());
        sampling
            .validate()
            .map_err(|e| format!("bad sampling parameters: {e:#}"))?;
        if !context.prefix_blocks.is_empty()
            && context.prefix_blocks.len() * BLOCK_TOKENS != context.position as usize
        {
            return Err(format!(
                "request {} names {} prefix blocks for position {}; blocks hold {BLOCK_TOKENS} tokens",
                context.request_id,
                context.prefix_blocks.len(),
                context.position
            ));
        }
        if !context.constrained
            && (!context.grammar.is_empty() || !context.constrained_tokens.is_empty())
        {
            return Err(format!(
                "request {} carries a grammar but is not constrained",
                context.request_id
            ));
        }
        let constraint = context.constrained.then(|| ConstraintSpec {
            grammar: (!context.grammar.is_empty()).then_some(context.grammar),
            generated: context.constrained_tokens,
        });
        Ok(ValidatedContext {
            prefix_blocks: context.prefix_blocks,
            constraint,
            request_id: context.request_id,
            origin_node_id: context.origin_node_id,
            origin_address: context.origin_address,
            plan,
            index,
            sampling,
            position: context.position as usize,
            step: context.step,
            sample: context.sample,
            reserve_positions: context.reserve_positions as usize,
            token_index: context.token_index,
            top_logprobs: context.top_logprobs.map(|k| k.min(MAX_TOP_LOGPROBS as u32)),
        })
    }
}

/// Sampling parameters as they travel: a `top_p` of 0 (unset) means no nucleus cut.
fn sampling_from_wire(wire: pb::SamplingParams) -> SamplingParams {
    SamplingParams {
        temperature: wire.temperature,
        top_p: if wire.top_p == 0.0 { 1.0 } else { wire.top_p },
        top_k: wire.top_k as usize,
        seed: wire.seed,
    }
}
