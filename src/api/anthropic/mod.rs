//! Anthropic's Messages API (`POST /v1/messages`), so that clients written for Claude
//! (the `anthropic` SDKs, apps that speak its API) work against a node. The request runs
//! through the same flow as OpenAI's, its tools through the same checks, grammar and
//! parsing (`api::tools`, via `tools.rs`); the shapes differ: content blocks (`tool_use`,
//! `tool_result`), a `system` of its own, `stop_reason`, and named server-sent events
//! (`message_start` … `message_stop`) when streamed. Keys come as `x-api-key` (accepted like a bearer token,
//! `api::access`).

mod answer;
mod error;
mod request;
mod tools;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;

use super::state::ApiState;
use error::error;

/// `POST /v1/messages`.
pub async fn messages(State(state): State<ApiState>, body: Bytes) -> Response {
    match request::prepare(&state, &body).await {
        Ok((prepared, tools)) => answer::respond(state, prepared, tools).await,
        Err(e) => error(e),
    }
}
