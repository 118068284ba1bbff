//! `POST /v1/chat/completions`, OpenAI-compatible, streaming (SSE) or not.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::logprobs;
use super::params::{Common, Prepared, Settings, loaded_model, parse};
use super::respond::{Format, now, respond, usage};
use super::state::ApiState;
use crate::engine::ChatMessage;
use crate::engine::serve::sampling::TokenLogprobs;
use crate::engine::text::tokenizer::TextTokenizer;
use crate::node::GenerationSummary;

/// The request body. Unknown fields are ignored, as OpenAI clients send many.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<MessageIn>,
    /// Report each generated token's logprob.
    logprobs: Option<bool>,
    /// And this many most likely alternatives (0 to 20; needs `logprobs`).
    top_logprobs: Option<u32>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Content>,
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
                other => {
                    return Err(ApiError::invalid_param(
                        "messages",
                        format!("messages[{i}] has role '{other}'; expected system, user or assistant"),
                    ));
                }
            };
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
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// A chat request body after every check that needs no model: what [`prepare`] then
/// tokenizes. Public so that the fuzz tests (tests/fuzz) run the handler's own checks.
#[derive(Debug)]
pub struct CheckedChat {
    pub messages: Vec<ChatMessage>,
    pub settings: Settings,
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
    let messages = messages(request.messages)?;
    Ok(CheckedChat { messages, settings })
}

/// Prompts of more bytes than this are tokenized on a blocking thread, so that a few large
/// prompts cannot stall the async workers that serve every other connection.
const TOKENIZE_INLINE_BYTES: usize = 16 << 10;

async fn prepare(state: &ApiState, body: &[u8]) -> Result<Prepared, ApiError> {
    let CheckedChat { messages, settings } = check_chat_request(body, state.flow.model_id())?;
    let loaded = loaded_model(state).await?;
    let tokenizer = loaded.tokenizer().clone();
    let prompt_bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    let prompt = if prompt_bytes > TOKENIZE_INLINE_BYTES {
        tokio::task::spawn_blocking(move || tokenizer.encode_chat(&messages))
            .await
            .map_err(|e| ApiError::unavailable(format!("tokenizing the prompt failed: {e}")))?
    } else {
        tokenizer.encode_chat(&messages)
    }
    .map_err(|e| ApiError::invalid_param("messages", format!("{e:#}")))?;
    settings.finish(loaded, prompt, "messages")
}

pub async fn chat_completions(State(state): State<ApiState>, body: Bytes) -> Response {
    let prepared = match prepare(&state, &body).await {
        Ok(prepared) => prepared,
        Err(error) => return error.into_response(),
    };
    let format = ChatFormat {
        model: prepared.model.clone(),
        created: now(),
        tokenizer: prepared.loaded.tokenizer().clone(),
        logprobs: prepared.request.top_logprobs.is_some(),
    };
    respond(state, prepared, format).await
}

/// Chat's response objects: `chat.completion`, and `chat.completion.chunk` when streamed.
struct ChatFormat {
    model: String,
    created: u64,
    tokenizer: Arc<TextTokenizer>,
    /// Whether the client asked for logprobs (`null` otherwise).
    logprobs: bool,
}

impl ChatFormat {
    fn logprobs(&self, tokens: &[TokenLogprobs]) -> serde_json::Value {
        if self.logprobs {
            logprobs::chat(&self.tokenizer, tokens)
        } else {
            serde_json::Value::Null
        }
    }

    fn chunk(
        &self,
        id: &str,
        delta: serde_json::Value,
        logprobs: serde_json::Value,
        finish: Option<&str>,
    ) -> serde_json::Value {
        json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        })
    }
}

impl Format for ChatFormat {
    fn whole(
        &mut self,
        id: &str,
        text: &str,
        logprobs: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> serde_json::Value {
        json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": self.logprobs(logprobs),
                "finish_reason": summary.finish.as_str(),
            }],
            "usage": usage(summary),
            "exo": super::respond::exo_details(summary),
        })
    }

    fn opening(&mut self, id: &str) -> Option<serde_json::Value> {
        Some(self.chunk(
            id,
            json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
            None,
        ))
    }

    fn piece(&mut self, id: &str, text: &str, logprobs: &[TokenLogprobs]) -> serde_json::Value {
        self.chunk(id, json!({"content": text}), self.logprobs(logprobs), None)
    }

    fn finish(
        &mut self,
        id: &str,
        logprobs: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> serde_json::Value {
        let logprobs = if logprobs.is_empty() {
            serde_json::Value::Null
        } else {
            self.logprobs(logprobs)
        };
        self.chunk(id, json!({}), logprobs, Some(summary.finish.as_str()))
    }

    fn note(&mut self, id: &str) -> serde_json::Value {
        self.chunk(id, json!({}), serde_json::Value::Null, None)
    }

    fn usage_only(&mut self, id: &str, summary: &GenerationSummary) -> serde_json::Value {
        let mut chunk = self.chunk(id, json!({}), serde_json::Value::Null, None);
        chunk["choices"] = json!([]);
        chunk["usage"] = usage(summary);
        chunk
    }
}
