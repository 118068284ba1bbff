//! Errors as Anthropic writes them: `{"type": "error", "error": {"type", "message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::error::ApiError;

/// An error answer, its type named by the status.
pub fn error(error: ApiError) -> Response {
    (error.status, Json(error_body(&error))).into_response()
}

pub fn error_body(error: &ApiError) -> serde_json::Value {
    let kind = match error.status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => "invalid_request_error",
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        // A draining node (409) and a cluster that cannot serve now (503): ask again,
        // elsewhere or later; a ring that made no progress (504) timed out.
        StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
        StatusCode::GATEWAY_TIMEOUT => "timeout_error",
        _ => "api_error",
    };
    json!({ "type": "error", "error": { "type": kind, "message": error.message } })
}
