//! `GET /v1/models`, `GET /v1/topology`, `GET /healthz`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::state::ApiState;
use crate::node::describe;

/// The models the cluster can serve now: this node's model, when a request arriving now
/// could be planned over the ring (the engine is up and the joined nodes' memory holds the
/// model), with the ring it would run on. When it cannot, the list is empty and `exo`
/// says why (a client choosing a model must not pick one that would fail).
pub async fn models(State(state): State<ApiState>) -> Json<serde_json::Value> {
    match state.flow.plan().await {
        Ok(plan) => Json(json!({
            "object": "list",
            "data": [{
                "id": state.flow.model_id(),
                "object": "model",
                "created": 0,
                "owned_by": "exo",
                "exo": {
                    "layers": plan.n_layers,
                    "nodes": plan.entries.len(),
                    "ring": describe(&plan),
                },
            }],
        })),
        Err(error) => Json(json!({
            "object": "list",
            "data": [],
            "exo": {
                "model": state.flow.model_id(),
                "unavailable": format!("{error:#}"),
            },
        })),
    }
}

/// The nodes this node knows (itself first), their capabilities and link states, and the
/// partition a request arriving now would get.
pub async fn topology(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(topology_json(&state).await))
}

/// The body of `/v1/topology` (the web UI's cluster view starts from it too).
pub async fn topology_json(state: &ApiState) -> serde_json::Value {
    let topology = state.flow.topology().await;
    let nodes: Vec<serde_json::Value> = topology
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "address": n.address,
                "model": n.model_id,
                "link_state": n.link_state,
                "holdings": n.holdings.iter().map(|h| json!({
                    "model": h.model_id,
                    "whole": h.whole,
                    "layers": h.layers.iter().map(|r| format!("{}..{}", r.start, r.end)).collect::<Vec<_>>(),
                    "embedding": h.embedding,
                    "head": h.head,
                })).collect::<Vec<_>>(),
                "capabilities": n.capabilities.as_ref().map(|c| json!({
                    "memory_bytes": c.memory_bytes,
                    "available_memory_bytes": c.available_memory_bytes,
                    "cpu_model": c.cpu_model,
                    "cpu_cores": c.cpu_cores,
                    "gpu_name": c.gpu_name,
                    "gpu_memory_bytes": c.gpu_memory_bytes,
                    "engine_device": c.engine_device,
                })),
            })
        })
        .collect();
    let partition = match state.flow.plan().await {
        Ok(plan) => json!({
            "model": plan.model_id,
            "layers": plan.n_layers,
            "ring": describe(&plan),
            "entries": plan.entries,
        }),
        Err(error) => json!({ "error": format!("{error:#}") }),
    };
    json!({
        "node_id": state.flow.node_id(),
        "nodes": nodes,
        "partition": partition,
        "security": state.security,
        "flapping": state.flow.flapping(),
        "draining": state.flow.is_draining(),
    })
}

/// 200 when the engine and the servers are usable, 503 otherwise; the body says which.
pub async fn healthz(State(state): State<ApiState>) -> Response {
    let resources = state.registry.list();
    let critical = ["inference_engine", "grpc_server", "api_server"];
    let unwell: Vec<String> = resources
        .iter()
        .filter(|r| critical.contains(&r.kind()) && !r.state().is_usable())
        .map(|r| format!("{} is {}", r.id(), r.state()))
        .collect();
    let status = if unwell.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if unwell.is_empty() { "ok" } else { "unavailable" },
        "node_id": state.flow.node_id(),
        "model": state.flow.model_id(),
        "problems": unwell,
        "peers": state.flow.topology().await.nodes.len() - 1,
    });
    (status, Json(body)).into_response()
}
