//! `POST /v1/chat/completions`, OpenAI-compatible, streaming (SSE) or not.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::state::ApiState;
use crate::engine::{ChatMessage, SamplingParams};
use crate::node::{GenerateRequest, GenerationEvent, GenerationSummary, describe};

/// The request body. Unknown fields are ignored, as OpenAI clients send many.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<MessageIn>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    /// Go on past end-of-sequence tokens to exactly max_tokens (as llama.cpp's server and
    /// vLLM allow; for benchmarks).
    #[serde(default)]
    ignore_eos: bool,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
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

/// Most stop strings OpenAI accepts.
const MAX_STOP_STRINGS: usize = 4;
/// The longest stop string accepted: each is matched against the text of every token.
pub const MAX_STOP_STRING_BYTES: usize = 256;

/// A checked request, ready to run.
struct Prepared {
    request: GenerateRequest,
    model: String,
    stream: bool,
    include_usage: bool,
}

fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
        } else {
            ApiError::bad_request(format!(
                "the request body does not match the chat completion schema: {error}"
            ))
        }
    })
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
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// `max_completion_tokens`, else `max_tokens`: checked against the context later.
    pub max_tokens: Option<u64>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

/// Parses and checks a chat request body for a cluster serving `served_model`: the JSON,
/// the model, `n`, sampling parameters, stop strings and messages. Never panics; every
/// refusal is a 4xx [`ApiError`] naming the parameter.
pub fn check_chat_request(body: &[u8], served_model: &str) -> Result<CheckedChat, ApiError> {
    let request = parse(body)?;
    if request.model != served_model {
        return Err(ApiError {
            code: Some("model_not_found"),
            param: Some("model"),
            ..ApiError::not_found(format!(
                "the model '{}' does not exist here; this cluster serves '{served_model}'",
                request.model,
            ))
        });
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature must be between 0 and 2, not {temperature}"),
        ));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param(
            "top_p",
            format!("top_p must be in (0, 1], not {top_p}"),
        ));
    }
    let stop = match request.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid_param(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings"),
        ));
    }
    if stop.iter().any(|s| s.len() > MAX_STOP_STRING_BYTES) {
        return Err(ApiError::invalid_param(
            "stop",
            format!("stop strings have at most {MAX_STOP_STRING_BYTES} bytes"),
        ));
    }
    let messages = messages(request.messages)?;
    Ok(CheckedChat {
        model: request.model,
        messages,
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k: request.top_k.unwrap_or(0) as usize,
            seed: request.seed.map(|s| s as u64),
        },
        stop,
        stream: request.stream,
        include_usage: request.stream_options.is_some_and(|o| o.include_usage),
        ignore_eos: request.ignore_eos,
    })
}

/// Prompts of more bytes than this are tokenized on a blocking thread, so that a few large
/// prompts cannot stall the async workers that serve every other connection.
const TOKENIZE_INLINE_BYTES: usize = 16 << 10;

async fn prepare(state: &ApiState, body: &[u8]) -> Result<Prepared, ApiError> {
    let request = check_chat_request(body, state.flow.model_id())?;
    let engine = state.engine.ensure_ready().await.map_err(|e| {
        ApiError::unavailable(format!("the inference engine is not available: {e}"))
    })?;
    let model = engine
        .model()
        .map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
    let tokenizer = model.tokenizer().clone();
    let prompt_bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
    let messages = request.messages;
    let prompt = if prompt_bytes > TOKENIZE_INLINE_BYTES {
        tokio::task::spawn_blocking(move || tokenizer.encode_chat(&messages))
            .await
            .map_err(|e| ApiError::unavailable(format!("tokenizing the prompt failed: {e}")))?
    } else {
        tokenizer.encode_chat(&messages)
    }
    .map_err(|e| ApiError::invalid_param("messages", format!("{e:#}")))?;
    let context = model.config().context_length;
    if prompt.len() >= context {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid_param(
                "messages",
                format!(
                    "the messages take {} tokens; the model's context holds {context}",
                    prompt.len()
                ),
            )
        });
    }
    let room = (context - prompt.len()) as u64;
    let max_tokens = match request.max_tokens {
        None => room.min(4096),
        Some(0) => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        Some(n) if n > room => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!(
                    "max_tokens is {n}, but only {room} tokens fit after the {} prompt tokens",
                    prompt.len()
                ),
            ));
        }
        Some(n) => n,
    };
    Ok(Prepared {
        request: GenerateRequest {
            prompt,
            max_tokens: max_tokens as usize,
            sampling: request.sampling,
            stop: request.stop,
            ignore_eos: request.ignore_eos,
        },
        model: request.model,
        stream: request.stream,
        include_usage: request.include_usage,
    })
}

pub async fn chat_completions(State(state): State<ApiState>, body: Bytes) -> Response {
    let prepared = match prepare(&state, &body).await {
        Ok(prepared) => prepared,
        Err(error) => return error.into_response(),
    };
    let events = state
        .timing
        .observe(state.flow.generate(prepared.request.clone()));
    if prepared.stream {
        stream_response(state, prepared, events).into_response()
    } else {
        match collect(events).await {
            Ok((id, text, summary)) => {
                Json(completion(&id, &prepared.model, &text, &summary)).into_response()
            }
            Err(error) => error.into_response(),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage(summary: &GenerationSummary) -> serde_json::Value {
    json!({
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "total_tokens": summary.prompt_tokens + summary.completion_tokens,
        // Not OpenAI's: how often the request lost a node and was planned again.
        "exo_replans": summary.replans.len(),
        "exo_replan_seconds": summary.replans.iter().map(|r| r.seconds).sum::<f64>(),
    })
}

/// What this cluster adds to a response: who ran which layers, and how fast.
fn exo_details(summary: &GenerationSummary) -> serde_json::Value {
    json!({
        "ring": describe(&summary.partition),
        "partition": summary.partition.entries,
        "prefill_seconds": summary.prefill_seconds,
        "decode_seconds": summary.decode_seconds,
        "decode_tokens_per_second": summary.decode_tok_s(),
        "replans": summary.replans,
    })
}

fn completion(id: &str, model: &str, text: &str, summary: &GenerationSummary) -> serde_json::Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "logprobs": null,
            "finish_reason": summary.finish.as_str(),
        }],
        "usage": usage(summary),
        "exo": exo_details(summary),
    })
}

/// Waits for the whole generation.
async fn collect(
    mut events: mpsc::Receiver<GenerationEvent>,
) -> Result<(String, String, GenerationSummary), ApiError> {
    let mut id = String::new();
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Started { request_id, .. } => id = request_id,
            GenerationEvent::Text(piece) => text.push_str(&piece),
            GenerationEvent::Replanned(_) => {}
            GenerationEvent::Finished(summary) => return Ok((id, text, summary)),
            GenerationEvent::Failed(error) => return Err(failure(error)),
        }
    }
    Err(ApiError::unavailable(
        "the generation ended without a result",
    ))
}

/// A generation that failed after it was accepted (every check of the request passed
/// in `prepare`): the cluster's fault, not the client's.
fn failure(error: String) -> ApiError {
    ApiError::unavailable(format!("generation failed: {error}"))
}

fn chunk(
    id: &str,
    model: &str,
    created: u64,
    delta: serde_json::Value,
    finish: Option<&str>,
) -> serde_json::Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
    })
}

fn stream_response(
    state: ApiState,
    prepared: Prepared,
    mut events: mpsc::Receiver<GenerationEvent>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(256);
    let mut shutting_down = state.shutting_down.clone();
    tokio::spawn(async move {
        let created = now();
        let model = prepared.model;
        let mut id = String::new();
        let send = |value: serde_json::Value| Event::default().data(value.to_string());
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = async { let _ = shutting_down.wait_for(|down| *down).await; } => {
                    let _ = tx.send(send(ApiError::unavailable("the node is shutting down").body())).await;
                    return;
                }
                // The client went away (even during a long prompt, when nothing is sent):
                // dropping `events` cancels the request.
                _ = tx.closed() => return,
            };
            let done = matches!(
                event,
                Some(GenerationEvent::Finished(_)) | Some(GenerationEvent::Failed(_))
            );
            let out = match event {
                Some(GenerationEvent::Started {
                    request_id,
                    partition,
                }) => {
                    id = request_id;
                    let mut first = chunk(
                        &id,
                        &model,
                        created,
                        json!({"role": "assistant", "content": ""}),
                        None,
                    );
                    first["exo"] =
                        json!({ "ring": describe(&partition), "partition": partition.entries });
                    vec![send(first)]
                }
                // The request lost a node and goes on over a new plan: an empty delta
                // with an `exo` field (clients that do not know it see nothing new).
                Some(GenerationEvent::Replanned(replan)) => {
                    let mut note = chunk(&id, &model, created, json!({}), None);
                    note["exo"] = json!({ "replan": replan });
                    vec![send(note)]
                }
                Some(GenerationEvent::Text(text)) => {
                    vec![send(chunk(
                        &id,
                        &model,
                        created,
                        json!({"content": text}),
                        None,
                    ))]
                }
                Some(GenerationEvent::Finished(summary)) => {
                    let mut last = chunk(
                        &id,
                        &model,
                        created,
                        json!({}),
                        Some(summary.finish.as_str()),
                    );
                    last["exo"] = exo_details(&summary);
                    let mut out = vec![send(last)];
                    if prepared.include_usage {
                        let mut usage_chunk = chunk(&id, &model, created, json!({}), None);
                        usage_chunk["choices"] = json!([]);
                        usage_chunk["usage"] = usage(&summary);
                        out.push(send(usage_chunk));
                    }
                    out.push(Event::default().data("[DONE]"));
                    out
                }
                Some(GenerationEvent::Failed(error)) => vec![send(failure(error).body())],
                None => return,
            };
            for event in out {
                // A closed channel means the client went away: dropping `events` cancels.
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Sse::new(futures::StreamExt::map(stream, Ok)).keep_alive(KeepAlive::default())
}
