//! A step on the wire, both ways: a request's context and its input for a shard — token
//! ids for the plan's first shard, a hidden state for the others.

use super::context::{Recipient, ValidatedContext};
use super::pb;
use super::tensor::{decode_hidden, encode_hidden};
use crate::engine::HiddenState;

/// What arrives for a shard to run.
#[derive(Debug, Clone)]
pub enum StepInput {
    Tokens(Vec<u32>),
    Hidden(HiddenState),
}

/// A step as it travels.
pub fn step_to_wire(context: &ValidatedContext, input: StepInput) -> pb::StepItem {
    pb::StepItem {
        context: Some(context.to_wire()),
        input: Some(match input {
            StepInput::Tokens(tokens) => pb::step_item::Input::Tokens(pb::TokenList { tokens }),
            StepInput::Hidden(hidden) => pb::step_item::Input::Tensor(encode_hidden(&hidden)),
        }),
    }
}

/// Checks a received step for node `node_id`: its context, and tokens for the first shard
/// of its plan or a hidden state for the others. Err says what is wrong with it.
pub fn step_from_wire(
    item: pb::StepItem,
    node_id: &str,
) -> Result<(ValidatedContext, StepInput), String> {
    let context = ValidatedContext::from_wire(item.context, node_id, Recipient::Shard)?;
    match item.input {
        Some(pb::step_item::Input::Tokens(list)) => {
            if context.index != 0 {
                return Err(format!(
                    "tokens for request {} went to shard {} of the plan; only the first shard takes tokens",
                    context.request_id, context.index
                ));
            }
            if list.tokens.is_empty() {
                return Err("the step has no tokens".into());
            }
            Ok((context, StepInput::Tokens(list.tokens)))
        }
        Some(pb::step_item::Input::Tensor(wire)) => {
            if context.index == 0 {
                return Err(format!(
                    "a hidden state for request {} went to the first shard of the plan, which takes tokens",
                    context.request_id
                ));
            }
            let hidden = decode_hidden(&wire).map_err(|e| format!("bad tensor: {e}"))?;
            Ok((context, StepInput::Hidden(hidden)))
        }
        None => Err("the step has neither tokens nor a tensor".into()),
    }
}
