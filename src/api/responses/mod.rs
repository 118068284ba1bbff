//! `POST /v1/responses`, OpenAI's Responses API (what its newer SDKs and agents default
//! to): `input` as a string or a list of items (messages, `function_call`s and their
//! `function_call_output`s), `instructions`, function `tools`, `text.format` for JSON
//! output, streamed as its typed events ([`format`]).
//!
//! A request is translated into a chat completion's body and goes through the chat
//! handler's own checks and preparation, so both endpoints take the same parameters the
//! same way; only the answer's shape differs.

mod format;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::chat::{check_chat_request, prepare_checked};
use super::error::ApiError;
use super::params::parse;
use super::respond::respond;
use super::state::ApiState;
use super::tools::Choice;
use format::ResponsesFormat;

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// The text of a message item's content: a string or a list of text parts.
fn content_text(i: usize, content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(
                |part| match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(text)) => {
                        Ok(text.to_string())
                    }
                    (kind, _) => Err(invalid(
                        "input",
                        format!(
                            "input[{i}] has a content part of type {kind:?}; only text is supported"
                        ),
                    )),
                },
            )
            .collect(),
        _ => Err(invalid(
            "input",
            format!("input[{i}].content must be a string or a list of parts"),
        )),
    }
}

/// `input` (and `instructions`) as chat messages.
fn messages(instructions: Option<&Value>, input: &Value) -> Result<Vec<Value>, ApiError> {
    let mut messages: Vec<Value> = Vec::new();
    if let Some(instructions) = instructions.and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    let items = match input {
        Value::String(text) => {
            return Ok([messages, vec![json!({"role": "user", "content": text})]].concat());
        }
        Value::Array(items) => items,
        _ => {
            return Err(invalid(
                "input",
                "input must be a string or a list of items",
            ));
        }
    };
    for (i, item) in items.iter().enumerate() {
        match item["type"].as_str().unwrap_or("message") {
            "message" => {
                let role = item["role"].as_str().unwrap_or("");
                let text = content_text(i, &item["content"])?;
                messages.push(json!({"role": role, "content": text}));
            }
            "function_call" => {
                let call = json!({
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                });
                // Calls of one turn are one assistant message.
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                        last["tool_calls"].as_array_mut().unwrap().push(call);
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let output = match &item["output"] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                messages.push(
                    json!({"role": "tool", "tool_call_id": item["call_id"], "content": output}),
                );
            }
            other => {
                return Err(invalid(
                    "input",
                    format!(
                        "input[{i}] has type '{other}'; expected message, function_call or function_call_output"
                    ),
                ));
            }
        }
    }
    Ok(messages)
}

/// Responses' flat function tools (`{"type": "function", "name", "parameters"}`) as
/// chat's, and its named tool choice (`{"type": "function", "name"}`).
fn tools(body: &Map<String, Value>, chat: &mut Map<String, Value>) {
    if let Some(Value::Array(tools)) = body.get("tools") {
        let nested: Vec<Value> = tools
            .iter()
            .map(|tool| match tool["type"].as_str() {
                Some("function") => json!({"type": "function", "function": {
                    "name": tool["name"], "description": tool["description"],
                    "parameters": tool.get("parameters").cloned().unwrap_or(Value::Null),
                }}),
                _ => tool.clone(),
            })
            .map(|mut tool| {
                // Absent fields stay absent (a null description or schema is no schema).
                if let Some(function) = tool.get_mut("function").and_then(Value::as_object_mut) {
                    function.retain(|_, v| !v.is_null());
                }
                tool
            })
            .collect();
        chat.insert("tools".into(), nested.into());
    }
    if let Some(choice) = body.get("tool_choice") {
        let choice = match choice.get("name") {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => choice.clone(),
        };
        chat.insert("tool_choice".into(), choice);
    }
}

/// `text.format` as chat's `response_format`.
fn response_format(body: &Map<String, Value>) -> Option<Value> {
    let format = body.get("text")?.get("format")?;
    Some(match format["type"].as_str() {
        Some("json_schema") => json!({"type": "json_schema", "json_schema": {
            "name": format["name"], "schema": format["schema"], "strict": format["strict"],
        }}),
        _ => format.clone(),
    })
}

/// The chat completion body that asks what a Responses body asks.
fn chat_body(body: &Map<String, Value>) -> Result<Value, ApiError> {
    let input = body
        .get("input")
        .ok_or_else(|| invalid("input", "input is required"))?;
    let mut chat = Map::new();
    chat.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    chat.insert(
        "messages".into(),
        messages(body.get("instructions"), input)?.into(),
    );
    for (from, to) in [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
    ] {
        if let Some(value) = body.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), value.clone());
        }
    }
    tools(body, &mut chat);
    if let Some(format) = response_format(body) {
        chat.insert("response_format".into(), format);
    }
    Ok(Value::Object(chat))
}

pub async fn responses(State(state): State<ApiState>, body: Bytes) -> Response {
    let answer = async {
        let body: Map<String, Value> = parse(&body, "responses")?;
        let chat = serde_json::to_vec(&chat_body(&body)?).unwrap_or_default();
        let checked = check_chat_request(&chat, state.flow.model_id())?;
        let (prepared, tools) = prepare_checked(&state, checked).await?;
        let format = ResponsesFormat::new(
            prepared.model.clone(),
            body.get("instructions").cloned().unwrap_or(Value::Null),
            tools.filter(|t| t.choice != Choice::None),
        );
        Ok::<_, ApiError>((prepared, format))
    }
    .await;
    match answer {
        Ok((prepared, format)) => respond(state, prepared, format).await,
        Err(error) => error.into_response(),
    }
}
