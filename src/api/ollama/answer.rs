//! Ollama's answers: one JSON object per line as the text comes (`stream`, its default),
//! or one object with the whole text; the last says `done` with Ollama's counts and
//! durations (nanoseconds). With tools, a call the model makes is `message.tool_calls`
//! (`{"function": {"name", "arguments": {…}}}`), streamed in a line of its own when the
//! answer is complete.

use std::convert::Infallible;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::error;
use crate::api::error::ApiError;
use crate::api::params::Prepared;
use crate::api::respond::REQUEST_ID_HEADER;
use crate::api::state::ApiState;
use crate::api::tools::calls;
use crate::api::tools::{Choice, ToolSet};
use crate::node::{GenerationEvent, GenerationSummary};

/// Which endpoint answers: chat's text is a `message`, generate's a `response`.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    Chat,
    Generate,
}

/// How one request's answer is written.
pub struct Answer {
    shape: Shape,
    /// The model as the client named it (Ollama echoes it).
    model: String,
    /// When the request arrived (`total_duration`).
    started: Instant,
    /// The tools the model may call (chat only).
    tools: Option<ToolSet>,
    /// Streamed text held back because a call may begin in it, and whether any went out.
    held: String,
    sent_text: bool,
}

/// Now, as Ollama writes `created_at` (RFC 3339).
pub fn created_at() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn nanos(seconds: f64) -> u64 {
    (seconds * 1e9) as u64
}

impl Answer {
    pub fn new(shape: Shape, model: String, started: Instant) -> Self {
        Answer {
            shape,
            model,
            started,
            tools: None,
            held: String::new(),
            sent_text: false,
        }
    }

    /// The same answer, its calls of `tools` (unless the choice is none) parsed out.
    pub fn with_tools(self, tools: Option<ToolSet>) -> Self {
        Answer {
            tools: tools.filter(|t| t.choice != Choice::None),
            ..self
        }
    }

    /// An object carrying `text` and the calls in it, not yet done.
    fn text_and_calls(&self, text: &str) -> serde_json::Value {
        let parsed = ToolSet::parse_answer(self.tools.as_ref(), text);
        if parsed.calls.is_empty() {
            return self.text(text);
        }
        let mut object = self.text(&parsed.content);
        object["message"]["tool_calls"] = parsed
            .calls
            .iter()
            .map(|c| json!({"function": {"name": c.name, "arguments": c.input()}}))
            .collect();
        object
    }

    /// The lines a streamed piece of text becomes: none while a call may begin in it.
    fn piece(&mut self, piece: &str) -> String {
        if self.tools.is_none() {
            return line(self.text(piece));
        }
        self.held.push_str(piece);
        let ready = calls::releasable(&self.held, !self.sent_text);
        let out: String = self.held.drain(..ready).collect();
        if out.is_empty() {
            return String::new();
        }
        self.sent_text = true;
        line(self.text(&out))
    }

    /// The last lines of a stream: the held text and its calls, then `done`.
    fn last(&mut self, summary: &GenerationSummary) -> String {
        let held = std::mem::take(&mut self.held);
        let mut out = String::new();
        if !held.is_empty() {
            out.push_str(&line(self.text_and_calls(&held)));
        }
        out.push_str(&line(self.done("", summary)));
        out
    }

    /// An object carrying `text`, not yet done.
    fn text(&self, text: &str) -> serde_json::Value {
        let mut object = json!({ "model": self.model, "created_at": created_at() });
        match self.shape {
            Shape::Chat => object["message"] = json!({ "role": "assistant", "content": text }),
            Shape::Generate => object["response"] = json!(text),
        }
        object["done"] = json!(false);
        object
    }

    /// The last object: `text` (empty when streamed) and its calls, why it ended,
    /// counts and times.
    fn done(&self, text: &str, summary: &GenerationSummary) -> serde_json::Value {
        let mut object = self.text_and_calls(text);
        object["done"] = json!(true);
        object["done_reason"] = json!(summary.finish.as_str());
        object["total_duration"] = json!(nanos(self.started.elapsed().as_secs_f64()));
        object["load_duration"] = json!(0);
        object["prompt_eval_count"] = json!(summary.prompt_tokens);
        object["prompt_eval_duration"] = json!(nanos(summary.prefill_seconds));
        object["eval_count"] = json!(summary.completion_tokens);
        object["eval_duration"] = json!(nanos(summary.decode_seconds));
        object
    }
}

/// Runs `prepared` and answers in Ollama's shape.
pub async fn respond(state: ApiState, prepared: Prepared, answer: Answer) -> Response {
    let events = state
        .timing
        .observe(state.flow.generate(prepared.request.clone()));
    let mut response = if prepared.stream {
        stream(events, answer, state.shutting_down.clone())
    } else {
        whole(events, answer).await
    };
    if let Ok(value) = HeaderValue::from_str(&prepared.request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

async fn whole(mut events: mpsc::Receiver<GenerationEvent>, answer: Answer) -> Response {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Text(piece) => text.push_str(&piece),
            GenerationEvent::Finished(summary) => {
                return Json(answer.done(&text, &summary)).into_response();
            }
            GenerationEvent::Failed(message) => {
                return error(ApiError::generation_failed(&message));
            }
            _ => {}
        }
    }
    error(ApiError::unavailable(
        "the generation ended without a result",
    ))
}

fn line(object: serde_json::Value) -> String {
    format!("{object}\n")
}

/// The answer as newline-delimited JSON. A failure after the first line is a line with
/// `error`, as Ollama sends it. Dropping the body (the client went away) drops `events`,
/// which cancels the request.
fn stream(
    events: mpsc::Receiver<GenerationEvent>,
    answer: Answer,
    shutting_down: watch::Receiver<bool>,
) -> Response {
    let lines =
        futures::stream::unfold(Some((events, answer, shutting_down)), |going| async move {
            let (mut events, mut answer, mut shutting_down) = going?;
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    _ = async { let _ = shutting_down.wait_for(|down| *down).await; } => {
                        let last = json!({ "error": "the node is shutting down" });
                        return Some((line(last), None));
                    }
                };
                match event? {
                    GenerationEvent::Text(piece) if !piece.is_empty() => {
                        let next = answer.piece(&piece);
                        if !next.is_empty() {
                            return Some((next, Some((events, answer, shutting_down))));
                        }
                    }
                    GenerationEvent::Finished(summary) => {
                        return Some((answer.last(&summary), None));
                    }
                    GenerationEvent::Failed(message) => {
                        let last =
                            json!({ "error": ApiError::generation_failed(&message).message });
                        return Some((line(last), None));
                    }
                    _ => {}
                }
            }
        });
    let mut response = Body::from_stream(lines.map(Ok::<_, Infallible>)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}
