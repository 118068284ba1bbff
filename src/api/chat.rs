//! `POST /v1/chat/completions`, OpenAI-compatible, streaming (SSE) or not, with tools
//! and constrained output (`response_format`). The response objects are [`ChatFormat`]'s.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::chat_format::ChatFormat;
use super::error::ApiError;
use super::params::{Common, Prepared, Settings, loaded_model, parse};
use super::respond::respond;
use super::state::ApiState;
use super::tools::{Choice, ToolSet, check_tools, constrain};
use crate::engine::ChatMessage;

/// The request body. Unknown fields are ignored, as OpenAI clients send many.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<MessageIn>,
    /// Report each generated token's logprob.
    logprobs: Option<bool>,
    /// And this many most likely alternatives (0 to 20; needs `logprobs`).
    top_logprobs: Option<u32>,
    /// Functions the model may call, and whether it may, must, or must call one of them.
    tools: Option<serde_json::Value>,
    tool_choice: Option<serde_json::Value>,
    /// Whether an answer may hold more than one call (default: it may).
    parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Content>,
    /// An assistant's calls: `{"id", "type": "function", "function": {"name", "arguments"}}`.
    tool_calls: Option<Vec<serde_json::Value>>,
    /// A tool message's answer to this call.
    tool_call_id: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

fn messages(raw: Vec<MessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(ApiError::invalid_param(
                        "messages",
                        format!("messages[{i}] has role '{other}'; expected system, user, assistant or tool"),
                    ));
                }
            };
            if m.tool_calls.is_some() && role != "assistant" {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("messages[{i}] has tool_calls, which only an assistant message may have"),
                ));
            }
            let content = match m.content {
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    "messages",
                                    format!("messages[{i}] has a content part of type '{kind}'; only text is supported"),
                                ));
                            }
                        }
                    }
                    text
                }
                None => String::new(),
            };
            let mut message = ChatMessage::new(role, content);
            message.tool_calls = m
                .tool_calls
                .map(|calls| calls.iter().enumerate().map(|(j, c)| history_call(i, j, c)).collect())
                .transpose()?;
            message.tool_call_id = m.tool_call_id;
            message.name = m.name;
            Ok(message)
        })
        .collect()
}

/// An assistant's earlier call (`messages[i].tool_calls[j]`) as chat templates read it:
/// the arguments an object, not OpenAI's JSON text.
fn history_call(
    i: usize,
    j: usize,
    call: &serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let function = call.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(|n| n.as_str());
    let Some(name) = name else {
        return Err(ApiError::invalid_param(
            "messages",
            format!("messages[{i}].tool_calls[{j}] needs function.name"),
        ));
    };
    let arguments = match function.and_then(|f| f.get("arguments")) {
        Some(serde_json::Value::String(text)) => serde_json::from_str(text).map_err(|e| {
            ApiError::invalid_param(
                "messages",
                format!("messages[{i}].tool_calls[{j}].function.arguments is not JSON: {e}"),
            )
        })?,
        Some(other) => other.clone(),
        None => json!({}),
    };
    Ok(json!({
        "id": call.get("id").cloned().unwrap_or_default(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }))
}

/// A chat request body after every check that needs no model: what [`prepare`] then
/// tokenizes. Public so that the fuzz tests (tests/fuzz) run the handler's own checks.
#[derive(Debug)]
pub struct CheckedChat {
    pub messages: Vec<ChatMessage>,
    pub settings: Settings,
    /// The tools offered, if any.
    pub tools: Option<ToolSet>,
}

/// Parses and checks a chat request body for a cluster serving `served_model`: the JSON,
/// the model, `n`, sampling parameters, stop strings, logprobs and messages. Never
/// panics; every refusal is a 4xx [`ApiError`] naming the parameter.
pub fn check_chat_request(body: &[u8], served_model: &str) -> Result<CheckedChat, ApiError> {
    let request: ChatRequest = parse(body, "chat completion")?;
    let top_logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (true, k) => Some(k.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
    };
    let settings = request.common.check_for(served_model, top_logprobs)?;
    let parallel = request.parallel_tool_calls.unwrap_or(true);
    let tools = check_tools(request.tools.as_ref(), request.tool_choice.as_ref())?
        .map(|tools| tools.with_parallel(parallel));
    if tools.as_ref().is_some_and(ToolSet::forces_call) && settings.grammar.is_some() {
        return Err(ApiError::invalid_param(
            "tool_choice",
            "a required or named tool_choice cannot be combined with a JSON response_format",
        ));
    }
    let messages = messages(request.messages)?;
    Ok(CheckedChat {
        messages,
        settings,
        tools,
    })
}

/// Prompts of more bytes than this are tokenized on a blocking thread, so that a few large
/// prompts cannot stall the async workers that serve every other connection.
const TOKENIZE_INLINE_BYTES: usize = 16 << 10;

async fn prepare(state: &ApiState, body: &[u8]) -> Result<(Prepared, Option<ToolSet>), ApiError> {
    prepare_checked(state, check_chat_request(body, state.flow.model_id())?).await
}

/// Tokenizes a checked chat (its tools through the template, their grammar in its
/// settings) into a request ready to run. Responses' requests come through here too.
pub(super) async fn prepare_checked(
    state: &ApiState,
    checked: CheckedChat,
) -> Result<(Prepared, Option<ToolSet>), ApiError> {
    let CheckedChat {
        messages,
        mut settings,
        tools,
    } = checked;
    let loaded = loaded_model(state).await?;
    let tokenizer = loaded.tokenizer().clone();
    constrain(tools.as_ref(), &loaded, &mut settings)?;
    let offered = tools
        .as_ref()
        .map(|t| t.offered().to_vec())
        .unwrap_or_default();
    let prompt_bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    let prompt = if prompt_bytes > TOKENIZE_INLINE_BYTES {
        tokio::task::spawn_blocking(move || tokenizer.encode_chat_with_tools(&messages, &offered))
            .await
            .map_err(|e| ApiError::unavailable(format!("tokenizing the prompt failed: {e}")))?
    } else {
        tokenizer.encode_chat_with_tools(&messages, &offered)
    }
    .map_err(|e| ApiError::invalid_param("messages", format!("{e:#}")))?;
    Ok((settings.finish(loaded, prompt, "messages")?, tools))
}

pub async fn chat_completions(State(state): State<ApiState>, body: Bytes) -> Response {
    let (prepared, tools) = match prepare(&state, &body).await {
        Ok(prepared) => prepared,
        Err(error) => return error.into_response(),
    };
    let format = ChatFormat::new(
        prepared.model.clone(),
        prepared.loaded.tokenizer().clone(),
        prepared.request.top_logprobs.is_some(),
        tools.filter(|t| t.choice != Choice::None),
    );
    respond(state, prepared, format).await
}
