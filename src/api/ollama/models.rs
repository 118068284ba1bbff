//! `GET /api/tags`, `POST /api/show`, `GET /api/ps`, `GET /api/version`: what Ollama's
//! clients ask before they chat (which models there are, their context length, which is
//! loaded).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::answer::created_at;
use super::{check_model, error};
use crate::api::error::ApiError;
use crate::api::params::{loaded_model, parse};
use crate::api::state::ApiState;
use crate::engine::LoadedModel;
use crate::resource::ResourceState;

/// The version of this server (Ollama's clients show it; none of them needs Ollama's).
pub async fn version() -> Json<serde_json::Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// The model family as Ollama names it (`llama`, `qwen2`, `gemma3`, …).
fn family(loaded: &LoadedModel) -> String {
    format!("{:?}", loaded.config().architecture).to_lowercase()
}

fn details(loaded: &LoadedModel) -> serde_json::Value {
    let family = family(loaded);
    json!({ "family": family, "families": [family] })
}

/// A model as `/api/tags` and `/api/ps` list it.
fn entry(state: &ApiState, loaded: &LoadedModel) -> serde_json::Value {
    let id = state.flow.model_id();
    json!({
        "name": id,
        "model": id,
        "modified_at": created_at(),
        "size": loaded.memory_need().weights,
        "details": details(loaded),
    })
}

/// The models the cluster can serve now: as `/v1/models`, this node's model when a
/// request arriving now could be planned over the ring, else none.
pub async fn tags(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let models = match state.flow.plan().await {
        Ok(_) => match loaded_model(&state).await {
            Ok(loaded) => vec![entry(&state, &loaded)],
            Err(_) => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    Json(json!({ "models": models }))
}

/// The models loaded in memory now (asking does not load one).
pub async fn ps(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let ready = matches!(
        state.engine.state(),
        ResourceState::Ready | ResourceState::Degraded
    );
    let mut models = Vec::new();
    if ready && let Ok(loaded) = loaded_model(&state).await {
        let mut model = entry(&state, &loaded);
        model["size_vram"] = json!(0);
        model["context_length"] = json!(loaded.config().context_length);
        models.push(model);
    }
    Json(json!({ "models": models }))
}

/// `/api/show`'s body: the model (`name` in older clients).
#[derive(Debug, Deserialize)]
struct ShowBody {
    model: Option<String>,
    name: Option<String>,
}

/// A model's details: its family and the sizes clients read (the context length above
/// all, which IDE plug-ins use to size their prompts).
pub async fn show(State(state): State<ApiState>, body: Bytes) -> Response {
    let request: ShowBody = match parse(&body, "Ollama show") {
        Ok(request) => request,
        Err(e) => return error(e),
    };
    let Some(model) = request.model.or(request.name) else {
        return error(ApiError::invalid_param("model", "model is required"));
    };
    if let Err(e) = check_model(&model, state.flow.model_id()) {
        return error(e);
    }
    let loaded = match loaded_model(&state).await {
        Ok(loaded) => loaded,
        Err(e) => return error(e),
    };
    let config = loaded.config();
    let family = family(&loaded);
    let mut info = serde_json::Map::new();
    info.insert("general.architecture".into(), json!(family));
    for (key, value) in [
        ("context_length", config.context_length),
        ("block_count", config.n_layers),
        ("embedding_length", config.hidden_size),
        ("feed_forward_length", config.intermediate_size),
        ("attention.head_count", config.n_heads),
        ("attention.head_count_kv", config.n_kv_heads),
        ("vocab_size", config.vocab_size),
    ] {
        info.insert(format!("{family}.{key}"), json!(value));
    }
    Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": details(&loaded),
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": created_at(),
    }))
    .into_response()
}
