//! A Messages answer: one `message` object (its content `text` and `tool_use` blocks), or
//! its server-sent events — `message_start`, `content_block_start`, `ping`, a
//! `content_block_delta` per piece of text (`text_delta`), `content_block_stop`, for each
//! call a `tool_use` block whose input comes as `input_json_delta`, `message_delta` (why
//! it stopped, tokens out) and `message_stop`; an `error` event if the generation fails
//! on the way.

use std::convert::Infallible;

use axum::Json;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::error::{error, error_body};
use super::tools;
use crate::api::error::ApiError;
use crate::api::params::Prepared;
use crate::api::respond::REQUEST_ID_HEADER;
use crate::api::state::ApiState;
use crate::api::tools::calls::{self, Parsed};
use crate::api::tools::{Choice, ToolSet};
use crate::engine::FinishReason;
use crate::node::{GenerationEvent, GenerationSummary};

/// Runs `prepared` and answers in Anthropic's shape (`tools`: those the model may call).
pub async fn respond(state: ApiState, prepared: Prepared, tools: Option<ToolSet>) -> Response {
    let events = state
        .timing
        .observe(state.flow.generate(prepared.request.clone()));
    let message = Message {
        id: format!("msg_{}", prepared.request_id),
        model: prepared.model.clone(),
        input_tokens: prepared.request.prompt.len(),
        tools: tools.filter(|t| t.choice != Choice::None),
    };
    let mut response = if prepared.stream {
        stream(events, Blocks::new(message), state.shutting_down.clone())
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
    tools: Option<ToolSet>,
}

impl Message {
    /// The `message` object holding `content`, with `stop_reason` and usage when done.
    fn object(
        &self,
        content: serde_json::Value,
        summary: Option<&GenerationSummary>,
        called: bool,
    ) -> serde_json::Value {
        let (stop_reason, stop_sequence) = summary.map(|s| stop(s, called)).unwrap_or_default();
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

    /// `text` split into its text and its calls of the offered tools.
    fn parse(&self, text: &str) -> Parsed {
        ToolSet::parse_answer(self.tools.as_ref(), text)
    }
}

/// Why the answer ended, as Anthropic says it (`tool_use` when it ended by itself after
/// calling tools), and the stop sequence that ended it.
fn stop(summary: &GenerationSummary, called: bool) -> (Option<&'static str>, Option<String>) {
    match (summary.finish, &summary.stop_string) {
        (FinishReason::Length, _) => (Some("max_tokens"), None),
        (FinishReason::Stop, Some(stop)) => (Some("stop_sequence"), Some(stop.clone())),
        (FinishReason::Stop, None) if called => (Some("tool_use"), None),
        (FinishReason::Stop, None) => (Some("end_turn"), None),
    }
}

async fn whole(mut events: mpsc::Receiver<GenerationEvent>, message: Message) -> Response {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Text(piece) => text.push_str(&piece),
            GenerationEvent::Finished(summary) => {
                let parsed = message.parse(&text);
                let mut content = Vec::new();
                if parsed.calls.is_empty() {
                    content.push(json!({ "type": "text", "text": text }));
                } else if !parsed.content.is_empty() {
                    content.push(json!({ "type": "text", "text": parsed.content }));
                }
                content.extend(parsed.calls.iter().map(tools::tool_use));
                let called = !parsed.calls.is_empty();
                let object = message.object(content.into(), Some(&summary), called);
                return Json(object).into_response();
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

/// A streamed answer's content blocks: the text block (opened at once without tools;
/// with tools, when text that cannot begin a call comes), then a `tool_use` block per
/// call when the answer is complete.
struct Blocks {
    message: Message,
    /// The index of the block now open or next to open.
    index: usize,
    text_open: bool,
    /// Text held back because a call may begin in it.
    held: String,
    sent_text: bool,
}

impl Blocks {
    fn new(message: Message) -> Self {
        Blocks {
            message,
            index: 0,
            text_open: false,
            held: String::new(),
            sent_text: false,
        }
    }

    fn start(&mut self, block: serde_json::Value) -> Event {
        event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": self.index, "content_block": block }),
        )
    }

    fn delta(&self, delta: serde_json::Value) -> Event {
        event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": self.index, "delta": delta }),
        )
    }

    fn stop_block(&mut self) -> Event {
        self.index += 1;
        event(
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": self.index - 1 }),
        )
    }

    /// `text` as a text delta, opening the text block first if needed.
    fn text(&mut self, text: &str) -> Vec<Event> {
        let mut out = Vec::new();
        if !self.text_open {
            self.text_open = true;
            out.push(self.start(json!({ "type": "text", "text": "" })));
        }
        if !text.is_empty() {
            self.sent_text = true;
            out.push(self.delta(json!({ "type": "text_delta", "text": text })));
        }
        out
    }

    /// A piece of the answer: sent as text, unless (with tools) a call may begin in it.
    fn piece(&mut self, piece: &str) -> Vec<Event> {
        if self.message.tools.is_none() {
            return self.text(piece);
        }
        self.held.push_str(piece);
        let ready = calls::releasable(&self.held, !self.sent_text);
        let out: String = self.held.drain(..ready).collect();
        if out.is_empty() {
            return Vec::new();
        }
        self.text(&out)
    }

    /// The held text and the calls, each block closed, then why the answer ended.
    fn finish(&mut self, summary: &GenerationSummary) -> Vec<Event> {
        let held = std::mem::take(&mut self.held);
        let parsed = self.message.parse(&held);
        let mut out = Vec::new();
        let text = if parsed.calls.is_empty() {
            held
        } else {
            parsed.content.clone()
        };
        if !text.is_empty() || (parsed.calls.is_empty() && !self.text_open) {
            out.extend(self.text(&text));
        }
        if self.text_open {
            out.push(self.stop_block());
        }
        for call in &parsed.calls {
            let mut block = tools::tool_use(call);
            block["input"] = json!({});
            out.push(self.start(block));
            let arguments = call.input().to_string();
            out.push(self.delta(json!({ "type": "input_json_delta", "partial_json": arguments })));
            out.push(self.stop_block());
        }
        let (stop_reason, stop_sequence) = stop(summary, !parsed.calls.is_empty());
        out.push(event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                "usage": { "output_tokens": summary.completion_tokens },
            }),
        ));
        out.push(event("message_stop", json!({ "type": "message_stop" })));
        out
    }

    /// The events a generation event becomes, and whether they end the stream.
    fn events_of(&mut self, generation: GenerationEvent) -> (Vec<Event>, bool) {
        match generation {
            GenerationEvent::Started { .. } => {
                let start = json!({
                    "type": "message_start",
                    "message": self.message.object(json!([]), None, false),
                });
                let mut out = vec![event("message_start", start)];
                if self.message.tools.is_none() {
                    out.extend(self.text(""));
                }
                out.push(event("ping", json!({ "type": "ping" })));
                (out, false)
            }
            GenerationEvent::Text(piece) if !piece.is_empty() => (self.piece(&piece), false),
            GenerationEvent::Finished(summary) => (self.finish(&summary), true),
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
}

/// The answer as server-sent events. Dropping the body (the client went away) drops
/// `events`, which cancels the request.
fn stream(
    events: mpsc::Receiver<GenerationEvent>,
    blocks: Blocks,
    shutting_down: watch::Receiver<bool>,
) -> Response {
    let batches =
        futures::stream::unfold(Some((events, blocks, shutting_down)), |going| async move {
            let (mut events, mut blocks, mut shutting_down) = going?;
            let next = tokio::select! {
                next = events.recv() => next,
                _ = async { let _ = shutting_down.wait_for(|down| *down).await; } => {
                    let down = ApiError::unavailable("the node is shutting down");
                    return Some((vec![event("error", error_body(&down))], None));
                }
            };
            let (out, done) = blocks.events_of(next?);
            let going = (!done).then_some((events, blocks, shutting_down));
            Some((out, going))
        });
    let events = batches
        .flat_map(futures::stream::iter)
        .map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
