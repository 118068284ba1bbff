//! Ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/version`,
//! `/api/ps`), so that apps and IDE plug-ins written for Ollama work unchanged against a
//! node. The requests run through the same flow as OpenAI's; only the shapes differ:
//! newline-delimited JSON instead of server-sent events, `options` instead of top-level
//! sampling fields, and errors as `{"error": "..."}`.

mod answer;
mod chat;
mod models;
mod options;

pub use chat::{chat, generate};
pub use models::{ps, show, tags, version};

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;

/// An error as Ollama writes it (its clients read `error`), with the status it would have.
fn error(error: ApiError) -> Response {
    (error.status, Json(json!({ "error": error.message }))).into_response()
}

/// Ollama names models `name:tag`, and clients add `:latest` to a bare name: both name
/// the served model.
fn check_model(model: &str, served: &str) -> Result<(), ApiError> {
    if model == served || model.strip_suffix(":latest") == Some(served) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "model '{model}' not found; this cluster serves '{served}'"
        )))
    }
}
