//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::{FailureKind, FlowError};

/// An error answer. Bad input is always 4xx; 5xx means the node itself failed.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            code: Some("invalid_value"),
            ..Self::bad_request(message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("not_found"),
        }
    }

    /// The node could not serve a valid request (a peer failed, the engine is down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: Some("unavailable"),
        }
    }

    /// A generation that failed after it was accepted, answered by its kind: the
    /// client's mistake 400, a draining node 409 (another node may take it), a cluster
    /// too small, lost nodes or a failed engine 503, a ring that made no progress 504.
    /// (429 is the request limiter's, before a generation starts.)
    pub fn generation_failed(failure: &FlowError) -> Self {
        let (status, kind) = match failure.kind {
            FailureKind::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            FailureKind::Draining => (StatusCode::CONFLICT, "server_error"),
            FailureKind::ClusterTooSmall | FailureKind::PeerLost | FailureKind::EngineFailed => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error")
            }
            FailureKind::TimedOut => (StatusCode::GATEWAY_TIMEOUT, "server_error"),
        };
        ApiError {
            status,
            kind,
            message: format!("generation failed: {}", failure.message),
            param: None,
            code: Some(failure.kind.as_str()),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}
