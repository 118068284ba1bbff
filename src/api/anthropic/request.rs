//! A Messages request: its checks, and the conversation (system, then user and assistant
//! turns of text blocks) through the model's chat template.

use serde::Deserialize;

use crate::api::config::MAX_STOP_STRING_BYTES;
use crate::api::error::ApiError;
use crate::api::params::{Prepared, Settings, loaded_model, parse};
use crate::api::state::ApiState;
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

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// What the blocks of a tool-using conversation are called, to refuse them by name.
const TOOL_BLOCKS: [&str; 2] = ["tool_use", "tool_result"];

/// The text of `content` (`what` names it in errors): text blocks only.
fn text(content: Content, what: &str) -> Result<String, ApiError> {
    match content {
        Content::Text(text) => Ok(text),
        Content::Blocks(blocks) => {
            let mut text = String::new();
            for block in blocks {
                match (block.kind.as_str(), block.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        let why = if TOOL_BLOCKS.contains(&kind) {
                            " (tool use is not supported by this server yet)"
                        } else {
                            ""
                        };
                        return Err(ApiError::invalid_param(
                            "messages",
                            format!(
                                "{what} has a content block of type '{kind}'; only text is supported{why}"
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
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
        let system = text(system, "system")?;
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
        let content = text(message.content, &format!("messages[{i}]"))?;
        messages.push(ChatMessage::new(role, content));
    }
    Ok(messages)
}

/// Checks and tokenizes a Messages request: the request ready to run.
pub async fn prepare(state: &ApiState, body: &[u8]) -> Result<Prepared, ApiError> {
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
    if used(&request.tools) {
        return Err(refuse("tools", "tool use"));
    }
    if used(&request.tool_choice) {
        return Err(refuse("tool_choice", "tool use"));
    }
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
    let loaded = loaded_model(state).await?;
    let prompt = loaded
        .tokenizer()
        .encode_chat(&messages)
        .map_err(|e| ApiError::invalid_param("messages", format!("{e:#}")))?;
    let settings = Settings::checked(
        request.model,
        request.stream,
        sampling,
        stops,
        Some(max_tokens),
    );
    settings.finish(loaded, prompt, "messages")
}
