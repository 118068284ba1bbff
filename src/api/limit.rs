//! A cap on the chat requests a node serves at once, with a bounded queue behind it: a
//! request past both gets 429 and Retry-After at once, and every queued request is served
//! in turn. A slot is held until the response body (a stream, perhaps) is finished.
//! `/v1/events` streams have a cap of their own (no queue: a stream never ends by itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::error::ApiError;

/// The limiter of one node's API.
pub struct RequestLimiter {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    max_queued: usize,
    retry_after: Duration,
    queued: AtomicUsize,
    rejected: AtomicU64,
    served: AtomicU64,
    event_slots: Arc<Semaphore>,
    max_event_streams: usize,
    events_rejected: AtomicU64,
}

/// Counts one queued request for as long as it waits (also when its client gives up).
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestLimiter {
    pub fn new(config: &super::ApiConfig) -> Self {
        let max_concurrent = config.max_concurrent.max(1);
        RequestLimiter {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_queued: config.max_queued,
            retry_after: config.retry_after,
            queued: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            served: AtomicU64::new(0),
            event_slots: Arc::new(Semaphore::new(config.max_event_streams)),
            max_event_streams: config.max_event_streams,
            events_rejected: AtomicU64::new(0),
        }
    }

    fn too_many(&self) -> Response {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.rate_limited(format!(
            "this node is serving {} requests and {} more are waiting; try again shortly",
            self.max_concurrent, self.max_queued
        ))
    }

    fn too_many_streams(&self) -> Response {
        self.events_rejected.fetch_add(1, Ordering::Relaxed);
        self.rate_limited(format!(
            "this node has {} event streams open, its most (--max-event-streams); try again later",
            self.max_event_streams
        ))
    }

    fn rate_limited(&self, message: String) -> Response {
        let mut response = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message,
            param: None,
            code: Some("rate_limit_exceeded"),
        }
        .into_response();
        let seconds = self.retry_after.as_secs().max(1).to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Requests refused with 429 so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// `/v1/events` streams open now.
    pub fn event_streams(&self) -> usize {
        self.max_event_streams - self.event_slots.available_permits()
    }

    /// `/v1/events` streams refused with 429 so far.
    pub fn event_streams_rejected(&self) -> u64 {
        self.events_rejected.load(Ordering::Relaxed)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "max_concurrent_requests": self.max_concurrent,
            "max_queued_requests": self.max_queued,
            "in_flight": self.max_concurrent - self.slots.available_permits(),
            "queued": self.queued.load(Ordering::Relaxed),
            "served": self.served.load(Ordering::Relaxed),
            "rejected_429": self.rejected.load(Ordering::Relaxed),
            "max_event_streams": self.max_event_streams,
            "event_streams": self.event_streams(),
            "event_streams_rejected_429": self.event_streams_rejected(),
        })
    }
}

/// The middleware: completion requests (chat and text) take a slot (waiting in the queue
/// when there is room); event streams take one of theirs, or get 429.
pub async fn limit(
    State(limiter): State<Arc<RequestLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    if is_event_stream(request.method(), request.uri().path()) {
        return match limiter.event_slots.clone().try_acquire_owned() {
            Ok(permit) => hold_until_done(next.run(request).await, permit),
            Err(_) => limiter.too_many_streams(),
        };
    }
    if !is_generation(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let permit = match limiter.slots.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            if limiter.queued.fetch_add(1, Ordering::AcqRel) >= limiter.max_queued {
                limiter.queued.fetch_sub(1, Ordering::AcqRel);
                return limiter.too_many();
            }
            let _place = QueuePlace(&limiter.queued);
            match limiter.slots.clone().acquire_owned().await {
                Ok(permit) => permit,
                // Closed only if the semaphore is dropped: not while the node serves.
                Err(_) => {
                    return ApiError::unavailable("the node is shutting down").into_response();
                }
            }
        }
    };
    limiter.served.fetch_add(1, Ordering::Relaxed);
    hold_until_done(next.run(request).await, permit)
}

/// Keeps `permit` until the response's body is done (or dropped, when the client leaves).
fn hold_until_done(response: Response, permit: tokio::sync::OwnedSemaphorePermit) -> Response {
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// The routes that run a generation: each holds a slot of the request limiter (and all
/// but Ollama's take JSON bodies only).
pub(super) fn is_generation(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST
        && matches!(
            path,
            "/v1/chat/completions"
                | "/v1/completions"
                | "/v1/messages"
                | "/api/chat"
                | "/api/generate"
        )
}

/// The route that streams the cluster state: each stream holds an event slot.
fn is_event_stream(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::GET && path == "/v1/events"
}
