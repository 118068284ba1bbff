//! `POST /api/chat` and `POST /api/generate`: a conversation (with `tools`, calls and
//! their results, checked and constrained as on every other endpoint) through the model's
//! chat template, or a prompt (templated as one user turn, or `raw` as it is).

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::answer::{Answer, Shape, created_at, respond};
use super::options::{Options, refuse_if, used};
use super::{check_model, error};
use crate::api::error::ApiError;
use crate::api::params::{Prepared, loaded_model, parse};
use crate::api::state::ApiState;
use crate::api::tools::{ToolSet, check_tools, constrain};
use crate::engine::ChatMessage;

/// `/api/chat`'s body. Unknown fields (`keep_alive`, `think`) are ignored.
#[derive(Debug, Deserialize)]
struct ChatBody {
    model: String,
    messages: Option<Vec<MessageIn>>,
    /// Ollama streams unless told not to.
    stream: Option<bool>,
    options: Option<Options>,
    format: Option<serde_json::Value>,
    tools: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Option<String>,
    images: Option<serde_json::Value>,
    /// An assistant's calls: `[{"function": {"name", "arguments": {…}}}]`.
    tool_calls: Option<Vec<serde_json::Value>>,
    /// A tool message's function (`tool_name`, or `name` in older clients).
    tool_name: Option<String>,
    name: Option<String>,
}

/// `/api/generate`'s body.
#[derive(Debug, Deserialize)]
struct GenerateBody {
    model: String,
    prompt: Option<String>,
    system: Option<String>,
    /// The prompt as it is, without the chat template.
    raw: Option<bool>,
    stream: Option<bool>,
    options: Option<Options>,
    format: Option<serde_json::Value>,
    images: Option<serde_json::Value>,
    template: Option<serde_json::Value>,
    suffix: Option<serde_json::Value>,
    context: Option<serde_json::Value>,
}

pub async fn chat(State(state): State<ApiState>, body: Bytes) -> Response {
    let started = Instant::now();
    let request: ChatBody = match parse(&body, "Ollama chat") {
        Ok(request) => request,
        Err(e) => return error(e),
    };
    let model = request.model.clone();
    match prepare_chat(&state, request).await {
        Ok(Some((prepared, tools))) => {
            let answer = Answer::new(Shape::Chat, model, started).with_tools(tools);
            respond(state, prepared, answer).await
        }
        Ok(None) => loaded(&model, Shape::Chat),
        Err(e) => error(e),
    }
}

pub async fn generate(State(state): State<ApiState>, body: Bytes) -> Response {
    let started = Instant::now();
    let request: GenerateBody = match parse(&body, "Ollama generate") {
        Ok(request) => request,
        Err(e) => return error(e),
    };
    let model = request.model.clone();
    match prepare_generate(&state, request).await {
        Ok(Some(prepared)) => {
            let answer = Answer::new(Shape::Generate, model, started);
            respond(state, prepared, answer).await
        }
        Ok(None) => loaded(&model, Shape::Generate),
        Err(e) => error(e),
    }
}

/// Ollama's answer to a request with nothing to say (no messages, no prompt): the model
/// is loaded, which is how its clients preload one.
fn loaded(model: &str, shape: Shape) -> Response {
    let mut body = json!({
        "model": model,
        "created_at": created_at(),
        "done": true,
        "done_reason": "load",
    });
    match shape {
        Shape::Chat => body["message"] = json!({"role": "assistant", "content": ""}),
        Shape::Generate => body["response"] = json!(""),
    }
    Json(body).into_response()
}

/// An assistant's earlier call (`messages[i].tool_calls[j]`, Ollama's `{"function":
/// {"name", "arguments"}}`) as chat templates read it.
fn history_call(
    i: usize,
    j: usize,
    call: &serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let function = &call["function"];
    let Some(name) = function["name"].as_str() else {
        return Err(ApiError::invalid_param(
            "messages",
            format!("messages[{i}].tool_calls[{j}] needs function.name"),
        ));
    };
    let arguments = match &function["arguments"] {
        serde_json::Value::Null => json!({}),
        other => other.clone(),
    };
    Ok(json!({
        "id": call.get("id").cloned().unwrap_or_default(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }))
}

/// The chat's messages as the template reads them.
fn messages(raw: Vec<MessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut messages = Vec::with_capacity(raw.len());
    for (i, message) in raw.into_iter().enumerate() {
        refuse_if(used(&message.images), "images", "image input")?;
        let role = match message.role.as_str() {
            role @ ("system" | "user" | "assistant" | "tool") => role,
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!(
                        "messages[{i}] has role '{other}'; expected system, user, assistant or tool"
                    ),
                ));
            }
        };
        let calls = message.tool_calls.unwrap_or_default();
        if !calls.is_empty() && role != "assistant" {
            return Err(ApiError::invalid_param(
                "messages",
                format!("messages[{i}] has tool_calls, which only an assistant message may have"),
            ));
        }
        let mut out = ChatMessage::new(role, message.content.unwrap_or_default());
        if !calls.is_empty() {
            let calls = calls.iter().enumerate().map(|(j, c)| history_call(i, j, c));
            out.tool_calls = Some(calls.collect::<Result<_, _>>()?);
        }
        out.name = message.tool_name.or(message.name);
        messages.push(out);
    }
    Ok(messages)
}

/// The chat's request and the tools the model may call, or None when it has no
/// messages (a preload).
async fn prepare_chat(
    state: &ApiState,
    request: ChatBody,
) -> Result<Option<(Prepared, Option<ToolSet>)>, ApiError> {
    check_model(&request.model, state.flow.model_id())?;
    refuse_if(used(&request.format), "format", "structured output")?;
    let tools = check_tools(request.tools.as_ref(), None)?;
    let messages = messages(request.messages.unwrap_or_default())?;
    if messages.is_empty() {
        loaded_model(state).await?;
        return Ok(None);
    }
    let loaded = loaded_model(state).await?;
    let offered = tools.as_ref().map(|t| t.offered()).unwrap_or_default();
    let prompt = loaded
        .tokenizer()
        .encode_chat_with_tools(&messages, offered)
        .map_err(|e| ApiError::invalid_param("messages", format!("{e:#}")))?;
    let mut settings = request.options.unwrap_or_default().settings(
        request.model,
        request.stream.unwrap_or(true),
        prompt.len(),
        loaded.config().context_length,
    )?;
    constrain(tools.as_ref(), &loaded, &mut settings)?;
    let prepared = settings.finish(loaded, prompt, "messages")?;
    Ok(Some((prepared, tools)))
}

/// The generation's request, or None when its prompt is empty (a preload).
async fn prepare_generate(
    state: &ApiState,
    request: GenerateBody,
) -> Result<Option<Prepared>, ApiError> {
    check_model(&request.model, state.flow.model_id())?;
    refuse_if(used(&request.format), "format", "structured output")?;
    refuse_if(used(&request.images), "images", "image input")?;
    refuse_if(used(&request.template), "template", "a template override")?;
    refuse_if(used(&request.suffix), "suffix", "fill-in-the-middle")?;
    refuse_if(
        used(&request.context),
        "context",
        "a previous answer's context",
    )?;
    let prompt = request.prompt.unwrap_or_default();
    if prompt.is_empty() {
        loaded_model(state).await?;
        return Ok(None);
    }
    let loaded = loaded_model(state).await?;
    let tokenizer = loaded.tokenizer();
    let tokens = if request.raw.unwrap_or(false) {
        tokenizer.encode_prompt(&prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = request.system.filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", prompt));
        tokenizer.encode_chat(&messages)
    }
    .map_err(|e| ApiError::invalid_param("prompt", format!("{e:#}")))?;
    let settings = request.options.unwrap_or_default().settings(
        request.model,
        request.stream.unwrap_or(true),
        tokens.len(),
        loaded.config().context_length,
    )?;
    settings.finish(loaded, tokens, "prompt").map(Some)
}
