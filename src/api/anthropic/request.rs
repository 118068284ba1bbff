//! A Messages request: its checks, and the conversation (system, then user and assistant
//! turns of text, `tool_use` and `tool_result` blocks) through the model's chat template
//! with the tools offered.

use serde::Deserialize;

use super::tools;
use crate::api::chat::{CheckedChat, prepare_checked};
use crate::api::config::MAX_STOP_STRING_BYTES;
use crate::api::error::ApiError;
use crate::api::params::{Prepared, Settings, parse};
use crate::api::state::ApiState;
use crate::api::tools::ToolSet;
use crate::engine::{ChatMessage, SamplingParams};

/// The body. Unknown fields (`metadata`, `service_tier`) are ignored.
#[derive(Debug, Deserialize)]
struct MessagesBody {
    model: String,
    /// Required by Anthropic's API: a request must say how long its answer may be.
    max_tokens: Option<u64>,
    messages: Vec<MessageIn>,
    system: Option<Content>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    #[serde(default)]
    stream: bool,
    tools: Option<serde_json::Value>,
    tool_choice: Option<serde_json::Value>,
    thinking: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Content,
}

/// A string, or a list of content blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

/// A content block: `text`, an assistant's `tool_use` (`id`, `name`, `input`) or a user's
/// `tool_result` (`tool_use_id`, `content`, `is_error`).
#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<serde_json::Value>,
    tool_use_id: Option<String>,
    content: Option<serde_json::Value>,
    is_error: Option<bool>,
}

/// A message's parts: its text, the calls it makes (an assistant's) and the results it
/// returns (a user's, as `tool` messages).
#[derive(Default)]
struct Parts {
    text: String,
    calls: Vec<serde_json::Value>,
    results: Vec<ChatMessage>,
}

/// The text of a `tool_result`'s content: a string or a list of text blocks.
fn result_text(what: &str, content: Option<serde_json::Value>) -> Result<String, ApiError> {
    match content {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(text)) => Ok(text),
        Some(serde_json::Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match (b["type"].as_str(), b["text"].as_str()) {
                (Some("text"), Some(text)) => Ok(text.to_string()),
                (kind, _) => Err(ApiError::invalid_param(
                    "messages",
                    format!("{what}'s tool_result has a content block of type {kind:?}; only text is supported"),
                )),
            })
            .collect(),
        Some(_) => Err(ApiError::invalid_param(
            "messages",
            format!("{what}'s tool_result content must be a string or a list of text blocks"),
        )),
    }
}

/// The parts of `content` (`what` names it in errors, `role` says which blocks it may
/// hold: tool_use is an assistant's, tool_result a user's).
fn parts(content: Content, what: &str, role: &str) -> Result<Parts, ApiError> {
    let blocks = match content {
        Content::Text(text) => {
            return Ok(Parts {
                text,
                ..Parts::default()
            });
        }
        Content::Blocks(blocks) => blocks,
    };
    let mut parts = Parts::default();
    for block in blocks {
        match (block.kind.as_str(), role) {
            ("text", _) => parts.text.push_str(block.text.as_deref().unwrap_or("")),
            ("tool_use", "assistant") => {
                let (Some(id), Some(name)) = (block.id, block.name) else {
                    return Err(ApiError::invalid_param(
                        "messages",
                        format!("{what} has a tool_use block without id or name"),
                    ));
                };
                let input = block.input.unwrap_or_else(|| serde_json::json!({}));
                parts.calls.push(serde_json::json!({
                    "id": id, "type": "function",
                    "function": {"name": name, "arguments": input},
                }));
            }
            ("tool_result", "user") => {
                let Some(id) = block.tool_use_id else {
                    return Err(ApiError::invalid_param(
                        "messages",
                        format!("{what} has a tool_result block without tool_use_id"),
                    ));
                };
                let mut text = result_text(what, block.content)?;
                if block.is_error == Some(true) {
                    text = format!("Error: {text}");
                }
                let mut result = ChatMessage::new("tool", text);
                result.tool_call_id = Some(id);
                parts.results.push(result);
            }
            (kind @ ("tool_use" | "tool_result"), _) => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("{what} has a {kind} block, which a {role} message may not have"),
                ));
            }
            (kind, _) => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!(
                        "{what} has a content block of type '{kind}'; only text, tool_use and tool_result are supported"
                    ),
                ));
            }
        }
    }
    Ok(parts)
}

/// Whether a JSON value is a real use of a field: not null, [] or {}.
fn used(value: &Option<serde_json::Value>) -> bool {
    match value {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn refuse(field: &'static str, what: &str) -> ApiError {
    ApiError::invalid_param(
        field,
        format!("'{field}' ({what}) is not supported by this server yet"),
    )
}

/// The conversation as chat messages: the system prompt first, then the turns, which
/// must begin with the user and end with the user (an assistant turn last would ask to
/// continue it, which is not supported yet).
fn conversation(
    system: Option<Content>,
    raw: Vec<MessageIn>,
) -> Result<Vec<ChatMessage>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut messages = Vec::with_capacity(raw.len() + 1);
    if let Some(system) = system {
        let system = parts(system, "system", "system")?.text;
        if !system.is_empty() {
            messages.push(ChatMessage::new("system", system));
        }
    }
    let last = raw.len() - 1;
    for (i, message) in raw.into_iter().enumerate() {
        let role = match message.role.as_str() {
            role @ ("user" | "assistant") => role,
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("messages[{i}] has role '{other}'; expected user or assistant"),
                ));
            }
        };
        if i == last && role == "assistant" {
            return Err(ApiError::invalid_param(
                "messages",
                "the last message is the assistant's: continuing a prefilled answer is not supported yet; end with a user message",
            ));
        }
        let Parts {
            text,
            calls,
            results,
        } = parts(message.content, &format!("messages[{i}]"), role)?;
        // A user turn's tool results come first (they answer the calls before them),
        // then its text, if any.
        let had_results = !results.is_empty();
        messages.extend(results);
        if role == "assistant" || !had_results || !text.is_empty() {
            let mut message = ChatMessage::new(role, text);
            message.tool_calls = (!calls.is_empty()).then_some(calls);
            messages.push(message);
        }
    }
    Ok(messages)
}

/// Checks and tokenizes a Messages request (its tools through the chat path's own
/// preparation): the request ready to run, and the tools the model may call.
pub async fn prepare(
    state: &ApiState,
    body: &[u8],
) -> Result<(Prepared, Option<ToolSet>), ApiError> {
    let request: MessagesBody = parse(body, "Messages")?;
    let served = state.flow.model_id();
    if request.model != served {
        return Err(ApiError::not_found(format!(
            "model: '{}' is not served here; this cluster serves '{served}'",
            request.model
        )));
    }
    let Some(max_tokens) = request.max_tokens else {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "max_tokens: Field required",
        ));
    };
    if max_tokens == 0 {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let tools = tools::check(request.tools.as_ref(), request.tool_choice.as_ref())?;
    if used(&request.thinking)
        && request.thinking.as_ref().and_then(|t| t.get("type")) != Some(&"disabled".into())
    {
        return Err(refuse("thinking", "extended thinking"));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature must be between 0 and 1, not {temperature}"),
        ));
    }
    let sampling = SamplingParams {
        temperature,
        top_p: request.top_p.unwrap_or(1.0),
        top_k: request.top_k.unwrap_or(0) as usize,
        seed: None,
    };
    sampling
        .validate()
        .map_err(|e| ApiError::invalid_param("top_p", format!("{e}")))?;
    let stops = request.stop_sequences.unwrap_or_default();
    if stops
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_STRING_BYTES)
    {
        return Err(ApiError::invalid_param(
            "stop_sequences",
            format!("stop sequences have 1 to {MAX_STOP_STRING_BYTES} bytes"),
        ));
    }
    let messages = conversation(request.system, request.messages)?;
    let settings = Settings::checked(
        request.model,
        request.stream,
        sampling,
        stops,
        Some(max_tokens),
    );
    let checked = CheckedChat {
        messages,
        settings,
        tools,
    };
    prepare_checked(state, checked).await
}
