//! The HTTP API of a node: OpenAI-compatible chat and text completions, models, topology,
//! health, and the admin endpoints over the node's resources.

mod access;
mod admin;
mod chat;
mod completions;
mod config;
mod error;
mod events;
mod info;
mod limit;
mod logprobs;
mod metrics;
mod params;
mod respond;
mod server;
mod state;
mod timing;
mod ui;

pub use chat::{CheckedChat, check_chat_request};
pub use config::ApiConfig;
pub use error::ApiError;
pub use limit::RequestLimiter;
pub use server::ApiServer;
pub use state::ApiState;
pub use timing::TokenTiming;

use axum::Router;
use axum::routing::{get, post};

/// The routes that run a generation: JSON bodies only, and each holds a slot of the
/// request limiter.
fn is_generation(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST && matches!(path, "/v1/chat/completions" | "/v1/completions")
}

/// The route that streams the cluster state: each stream holds an event slot.
fn is_event_stream(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::GET && path == "/v1/events"
}

/// Every route of the API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/style.css", get(ui::style))
        .route("/v1/events", get(events::events))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(info::models))
        .route("/v1/topology", get(info::topology))
        .route("/healthz", get(info::healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/resources", get(admin::list))
        .route("/v1/resources/health", get(admin::health))
        .route("/v1/resources/report", get(admin::report))
        .route("/v1/resources/{id}/reset", post(admin::reset))
        .route(
            "/v1/admin/drain",
            post(admin::drain).get(admin::drain_status),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.limiter.clone(),
            limit::limit,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.config.clone(),
            access::guard,
        ))
        .with_state(state)
}
