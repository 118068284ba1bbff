//! A step's result on the wire, both ways: the last shard's outcome (a sampled token with
//! its logprobs when asked for, the end of a prompt chunk, or an error) on its way to the
//! request's origin.

use super::context::{Recipient, ValidatedContext};
use super::pb;
use crate::engine::serve::sampling::{MAX_TOP_LOGPROBS, TokenLogprobs};

/// The last shard's outcome for one step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// A sampled token, with its logprobs when the request asked for them.
    Token(u32, Option<TokenLogprobs>),
    /// A prompt chunk went through the whole ring (nothing is sampled for it).
    Done,
    Error(String),
    /// A node lacked the prefix the step was to reuse from its prefix cache: the origin
    /// runs the request again without it.
    PrefixMiss(String),
}

/// A result as it travels: the outcome of a step of `context`, produced by `node_id`.
pub fn result_to_wire(
    context: pb::RequestContext,
    node_id: String,
    outcome: StepOutcome,
) -> pb::ResultItem {
    let logprobs = match &outcome {
        StepOutcome::Token(_, Some(logprobs)) => Some(logprobs_to_wire(logprobs)),
        _ => None,
    };
    pb::ResultItem {
        context: Some(context),
        node_id,
        logprobs,
        outcome: Some(match outcome {
            StepOutcome::Token(token, _) => pb::result_item::Outcome::Token(token),
            StepOutcome::Done => pb::result_item::Outcome::Done(true),
            StepOutcome::Error(error) => pb::result_item::Outcome::Error(error),
            StepOutcome::PrefixMiss(why) => pb::result_item::Outcome::PrefixMiss(why),
        }),
    }
}

/// Checks a received result for node `node_id`, which must be the request's origin: the
/// context, the node that produced it, and the outcome. Err says what is wrong with it.
pub fn result_from_wire(
    item: pb::ResultItem,
    node_id: &str,
) -> Result<(ValidatedContext, String, StepOutcome), String> {
    let context = ValidatedContext::from_wire(item.context, node_id, Recipient::Origin)?;
    let outcome = match item.outcome {
        Some(pb::result_item::Outcome::Token(token)) => {
            StepOutcome::Token(token, logprobs_from_wire(token, item.logprobs))
        }
        Some(pb::result_item::Outcome::Done(_)) => StepOutcome::Done,
        Some(pb::result_item::Outcome::Error(error)) => StepOutcome::Error(error),
        Some(pb::result_item::Outcome::PrefixMiss(why)) => StepOutcome::PrefixMiss(why),
        None => return Err("the result has neither a token nor an error".into()),
    };
    Ok((context, item.node_id, outcome))
}

/// A token's logprobs as they travel to the origin (the token itself travels beside them).
fn logprobs_to_wire(logprobs: &TokenLogprobs) -> pb::TokenLogprobs {
    pb::TokenLogprobs {
        logprob: logprobs.logprob,
        top_tokens: logprobs.top.iter().map(|(t, _)| *t).collect(),
        top_logprobs: logprobs.top.iter().map(|(_, l)| *l).collect(),
    }
}

/// Received logprobs of `token`, at most [`MAX_TOP_LOGPROBS`] alternatives kept.
fn logprobs_from_wire(token: u32, wire: Option<pb::TokenLogprobs>) -> Option<TokenLogprobs> {
    let wire = wire?;
    Some(TokenLogprobs {
        token,
        logprob: wire.logprob,
        top: wire
            .top_tokens
            .into_iter()
            .zip(wire.top_logprobs)
            .take(MAX_TOP_LOGPROBS)
            .collect(),
    })
}
