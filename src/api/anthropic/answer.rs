//! A Messages answer: one `message` object, or its server-sent events —
//! `message_start`, `content_block_start`, `ping`, a `content_block_delta` per piece of
//! text, `content_block_stop`, `message_delta` (why it stopped, tokens out) and
//! `message_stop`; an `error` event if the generation fails on the way.

use std::convert::Infallible;

use axum::Json;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::error::{error, error_body};
use crate::api::error::ApiError;
use crate::api::params::Prepared;
use crate::api::respond::REQUEST_ID_HEADER;
use crate::api::state::ApiState;
use crate::engine::FinishReason;
use crate::node::{GenerationEvent, GenerationSummary};

/// Runs `prepared` and answers in Anthropic's shape.
pub async fn respond(state: ApiState, prepared: Prepared) -> Response {
    let events = state
        .timing
        .observe(state.flow.generate(prepared.request.clone()));
    let message = Message {
        id: format!("msg_{}", prepared.request_id),
        model: prepared.model.clone(),
        input_tokens: prepared.request.prompt.len(),
    };
    let mut response = if prepared.stream {
        stream(events, message, state.shutting_down.clone())
    } else {
        whole(events, message).await
    };
    if let Ok(value) = HeaderValue::from_str(&prepared.request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// What every form of the answer names.
struct Message {
    id: String,
    model: String,
    input_tokens: usize,
}

impl Message {
    /// The `message` object holding `content`, with `stop_reason` and usage when done.
    fn object(
        &self,
        content: serde_json::Value,
        summary: Option<&GenerationSummary>,
    ) -> serde_json::Value {
        let (stop_reason, stop_sequence) = summary.map(stop).unwrap_or_default();
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": summary.map_or(0, |s| s.completion_tokens),
            },
        })
    }
}

/// Why the answer ended, as Anthropic says it, and the stop sequence that ended it.
fn stop(summary: &GenerationSummary) -> (Option<&'static str>, Option<String>) {
    match (summary.finish, &summary.stop_string) {
        (FinishReason::Length, _) => (Some("max_tokens"), None),
        (FinishReason::Stop, Some(stop)) => (Some("stop_sequence"), Some(stop.clone())),
        (FinishReason::Stop, None) => (Some("end_turn"), None),
    }
}

async fn whole(mut events: mpsc::Receiver<GenerationEvent>, message: Message) -> Response {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Text(piece) => text.push_str(&piece),
            GenerationEvent::Finished(summary) => {
                let content = json!([{ "type": "text", "text": text }]);
                return Json(message.object(content, Some(&summary))).into_response();
            }
            GenerationEvent::Failed(why) => return error(ApiError::generation_failed(&why)),
            _ => {}
        }
    }
    error(ApiError::unavailable(
        "the generation ended without a result",
    ))
}

fn event(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// The events a generation event becomes, and whether they end the stream.
fn events_of(message: &Message, generation: GenerationEvent) -> (Vec<Event>, bool) {
    match generation {
        GenerationEvent::Started { .. } => (
            vec![
                event(
                    "message_start",
                    json!({ "type": "message_start", "message": message.object(json!([]), None) }),
                ),
                event(
                    "content_block_start",
                    json!({
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": { "type": "text", "text": "" },
                    }),
                ),
                event("ping", json!({ "type": "ping" })),
            ],
            false,
        ),
        GenerationEvent::Text(piece) if !piece.is_empty() => (
            vec![event(
                "content_block_delta",
                json!({
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": { "type": "text_delta", "text": piece },
                }),
            )],
            false,
        ),
        GenerationEvent::Finished(summary) => {
            let (stop_reason, stop_sequence) = stop(&summary);
            (
                vec![
                    event(
                        "content_block_stop",
                        json!({ "type": "content_block_stop", "index": 0 }),
                    ),
                    event(
                        "message_delta",
                        json!({
                            "type": "message_delta",
                            "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                            "usage": { "output_tokens": summary.completion_tokens },
                        }),
                    ),
                    event("message_stop", json!({ "type": "message_stop" })),
                ],
                true,
            )
        }
        GenerationEvent::Failed(why) => (
            vec![event(
                "error",
                error_body(&ApiError::generation_failed(&why)),
            )],
            true,
        ),
        _ => (Vec::new(), false),
    }
}

/// The answer as server-sent events. Dropping the body (the client went away) drops
/// `events`, which cancels the request.
fn stream(
    events: mpsc::Receiver<GenerationEvent>,
    message: Message,
    shutting_down: watch::Receiver<bool>,
) -> Response {
    let batches =
        futures::stream::unfold(Some((events, message, shutting_down)), |going| async move {
            let (mut events, message, mut shutting_down) = going?;
            let next = tokio::select! {
                next = events.recv() => next,
                _ = async { let _ = shutting_down.wait_for(|down| *down).await; } => {
                    let down = ApiError::unavailable("the node is shutting down");
                    return Some((vec![event("error", error_body(&down))], None));
                }
            };
            let (out, done) = events_of(&message, next?);
            let going = (!done).then_some((events, message, shutting_down));
            Some((out, going))
        });
    let events = batches
        .flat_map(futures::stream::iter)
        .map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
