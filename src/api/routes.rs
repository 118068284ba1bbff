//! Every route of the API, and the layers in front of them: the access guard, the body
//! limit, the request limiter.

use axum::Router;
use axum::routing::{get, post};

use super::error::ApiError;
use super::state::ApiState;
use super::{
    access, admin, anthropic, chat, completions, events, info, limit, metrics, ollama, responses,
    ui,
};

/// Every route of the API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/style.css", get(ui::style))
        .route("/v1/events", get(events::events))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/models", get(info::models))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
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
        .route(
            "/v1/admin/faults",
            post(admin::set_faults).get(admin::faults),
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
