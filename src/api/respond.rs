//! Running a prepared request and answering with it, whole or as server-sent events; each
//! endpoint supplies the shape of its JSON through [`Format`].

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::json;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::params::Prepared;
use super::state::ApiState;
use crate::engine::serve::sampling::TokenLogprobs;
use crate::node::{GenerationEvent, GenerationSummary, describe};

/// The header that names the request (the id it has in every node's log).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How an endpoint writes its answers.
pub trait Format: Send + 'static {
    /// The whole answer of a request that was not streamed.
    fn whole(
        &mut self,
        id: &str,
        text: &str,
        logprobs: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> serde_json::Value;
    /// The chunk that opens a stream, if the endpoint sends one.
    fn opening(&mut self, id: &str) -> Option<serde_json::Value>;
    /// Events that follow the opening (Responses' `response.in_progress`).
    fn after_opening(&mut self, _id: &str) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// A chunk of text (with the logprobs of the tokens that made it, when asked for).
    fn piece(&mut self, id: &str, text: &str, logprobs: &[TokenLogprobs]) -> serde_json::Value;
    /// The events of a piece of text: [`Format::piece`]'s chunk, unless the endpoint
    /// sends more than one.
    fn pieces(
        &mut self,
        id: &str,
        text: &str,
        logprobs: &[TokenLogprobs],
    ) -> Vec<serde_json::Value> {
        vec![self.piece(id, text, logprobs)]
    }
    /// Whether the stream ends with OpenAI's `data: [DONE]` (chat and completions do).
    fn ends_with_done(&self) -> bool {
        true
    }
    /// Chunks of what a stream held back until the answer was complete (chat's tool
    /// calls), sent before [`Format::finish`]'s.
    fn before_finish(&mut self, _id: &str) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// Logprobs of `tokens` as the endpoint writes them (null where they were not asked
    /// for, or the endpoint has none).
    fn logprobs_of(&mut self, _tokens: &[TokenLogprobs]) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The last chunk's logprobs: those of the tokens whose text was held back to the
    /// end, null when there are none.
    fn leftover_logprobs(&mut self, tokens: &[TokenLogprobs]) -> serde_json::Value {
        if tokens.is_empty() {
            serde_json::Value::Null
        } else {
            self.logprobs_of(tokens)
        }
    }
    /// The last chunk with a choice: its finish reason.
    fn finish(
        &mut self,
        id: &str,
        logprobs: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> serde_json::Value;
    /// A chunk with nothing new for the client (an `exo` field is added to it).
    fn note(&mut self, id: &str) -> serde_json::Value;
    /// The chunk that carries only usage (`stream_options.include_usage`): no choices.
    fn usage_only(&mut self, id: &str, summary: &GenerationSummary) -> serde_json::Value;
}

/// Runs `prepared` and answers in the endpoint's format.
pub async fn respond(state: ApiState, prepared: Prepared, format: impl Format) -> Response {
    let request_id = prepared.request_id.clone();
    // Timed for /metrics (time to first token, inter-token latency, token counts).
    let events = state
        .timing
        .observe(state.flow.generate(prepared.request.clone()));
    let mut response = if prepared.stream {
        stream(state, prepared, events, format).into_response()
    } else {
        let mut format = format;
        match collect(events).await {
            Ok(done) => Json(format.whole(&done.id, &done.text, &done.logprobs, &done.summary))
                .into_response(),
            Err(error) => error.into_response(),
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn usage(summary: &GenerationSummary) -> serde_json::Value {
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
pub fn exo_details(summary: &GenerationSummary) -> serde_json::Value {
    json!({
        "request_id": summary.request_id,
        "ring": describe(&summary.partition),
        "partition": summary.partition.entries,
        "prefill_seconds": summary.prefill_seconds,
        "decode_seconds": summary.decode_seconds,
        "decode_tokens_per_second": summary.decode_tok_s(),
        "replans": summary.replans,
    })
}

/// A whole generation.
struct Done {
    id: String,
    text: String,
    logprobs: Vec<TokenLogprobs>,
    summary: GenerationSummary,
}

/// Waits for the whole generation.
async fn collect(mut events: mpsc::Receiver<GenerationEvent>) -> Result<Done, ApiError> {
    let mut id = String::new();
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Started { request_id, .. } => id = request_id,
            GenerationEvent::Text(piece) => text.push_str(&piece),
            GenerationEvent::Logprobs(token) => logprobs.push(token),
            GenerationEvent::Replanned(_) => {}
            GenerationEvent::Finished(summary) => {
                return Ok(Done {
                    id,
                    text,
                    logprobs,
                    summary,
                });
            }
            GenerationEvent::Failed(error) => return Err(ApiError::generation_failed(&error)),
        }
    }
    Err(ApiError::unavailable(
        "the generation ended without a result",
    ))
}

fn stream(
    state: ApiState,
    prepared: Prepared,
    mut events: mpsc::Receiver<GenerationEvent>,
    mut format: impl Format,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(256);
    let mut shutting_down = state.shutting_down.clone();
    tokio::spawn(async move {
        let mut id = String::new();
        // Logprobs of tokens whose text is still held back (a stop string may begin, a
        // character is incomplete): they go with the next chunk.
        let mut pending: Vec<TokenLogprobs> = Vec::new();
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
                    let mut first = format.opening(&id).unwrap_or_else(|| format.note(&id));
                    first["exo"] =
                        json!({ "ring": describe(&partition), "partition": partition.entries });
                    let mut out = vec![send(first)];
                    out.extend(format.after_opening(&id).into_iter().map(send));
                    out
                }
                // The request lost a node and goes on over a new plan: a chunk with nothing
                // new but an `exo` field (clients that do not know it see nothing new).
                Some(GenerationEvent::Replanned(replan)) => {
                    let mut note = format.note(&id);
                    note["exo"] = json!({ "replan": replan });
                    vec![send(note)]
                }
                Some(GenerationEvent::Logprobs(token)) => {
                    pending.push(token);
                    Vec::new()
                }
                Some(GenerationEvent::Text(text)) => format
                    .pieces(&id, &text, &std::mem::take(&mut pending))
                    .into_iter()
                    .map(send)
                    .collect(),
                Some(GenerationEvent::Finished(summary)) => {
                    let mut out: Vec<Event> =
                        format.before_finish(&id).into_iter().map(send).collect();
                    let mut last = format.finish(&id, &std::mem::take(&mut pending), &summary);
                    last["exo"] = exo_details(&summary);
                    out.push(send(last));
                    if prepared.include_usage {
                        out.push(send(format.usage_only(&id, &summary)));
                    }
                    if format.ends_with_done() {
                        out.push(Event::default().data("[DONE]"));
                    }
                    out
                }
                Some(GenerationEvent::Failed(error)) => {
                    vec![send(ApiError::generation_failed(&error).body())]
                }
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
