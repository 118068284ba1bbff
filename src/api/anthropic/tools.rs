//! Anthropic's tools as the chat path's: `tools` (`{name, description, input_schema}`) and
//! `tool_choice` (`auto`, `any`, `tool`, `none`) become OpenAI's function tools and
//! choice, checked by [`check_tools`] like every other endpoint's; a call the model makes
//! becomes a `tool_use` block.

use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::tools::calls::ToolCall;
use crate::api::tools::{ToolSet, check_tools};

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// One tool (`tools[i]`) as an OpenAI function tool. Anthropic's server tools (web
/// search, bash, …: a `type` other than `custom`) run on Anthropic's side and are refused
/// by name.
fn function_tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    match tool.get("type").and_then(Value::as_str) {
        None | Some("custom") => {}
        Some(kind) => {
            return Err(invalid(
                "tools",
                format!(
                    "tools[{i}] is the server tool '{kind}', which this server does not run; only client tools (name, description, input_schema) are supported"
                ),
            ));
        }
    }
    let mut function = json!({"name": tool.get("name").cloned().unwrap_or(Value::Null)});
    for (from, to) in [
        ("description", "description"),
        ("input_schema", "parameters"),
    ] {
        if let Some(value) = tool.get(from).filter(|v| !v.is_null()) {
            function[to] = value.clone();
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` as OpenAI's, and whether it allows more than one call.
fn choice(choice: Option<&Value>) -> Result<(Option<Value>, bool), ApiError> {
    let Some(choice) = choice.filter(|c| !c.is_null()) else {
        return Ok((None, true));
    };
    let parallel = choice.get("disable_parallel_tool_use") != Some(&Value::Bool(true));
    let openai = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => {
                return Err(invalid(
                    "tool_choice",
                    "tool_choice of type 'tool' needs a name",
                ));
            }
        },
        other => {
            return Err(invalid(
                "tool_choice",
                format!(
                    "tool_choice type {} is unknown; expected auto, any, tool or none",
                    other.map_or("(none)".to_string(), |t| format!("'{t}'"))
                ),
            ));
        }
    };
    Ok((Some(openai), parallel))
}

/// Checks a request's `tools` and `tool_choice`; None when it offers no tools.
pub fn check(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
) -> Result<Option<ToolSet>, ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(Value::Array(
            list.iter()
                .enumerate()
                .map(|(i, tool)| function_tool(i, tool))
                .collect::<Result<_, _>>()?,
        )),
        Some(_) => return Err(invalid("tools", "tools must be an array of tools")),
    };
    let (choice, parallel) = choice(tool_choice)?;
    let checked = check_tools(tools.as_ref(), choice.as_ref())?;
    Ok(checked.map(|set| set.with_parallel(parallel)))
}

/// A call as a `tool_use` block: Anthropic's id prefix, the arguments as an object.
pub fn tool_use(call: &ToolCall) -> Value {
    json!({
        "type": "tool_use",
        "id": tool_use_id(call),
        "name": call.name,
        "input": call.input(),
    })
}

/// `toolu_` and the call's own id digits.
pub fn tool_use_id(call: &ToolCall) -> String {
    let digits = call.id.strip_prefix("call_").unwrap_or(&call.id);
    format!("toolu_{digits}")
}
