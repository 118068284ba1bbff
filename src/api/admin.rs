//! The admin API over the node's resources: list, health, report, reset.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use futures::future::join_all;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::state::ApiState;
use crate::resource::{ResourceReport, ResourceSnapshot, ResourceSummary};

/// Every live resource: id, type, state, last error, counts, timings.
pub async fn list(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let resources: Vec<ResourceSnapshot> =
        state.registry.list().iter().map(|r| r.snapshot()).collect();
    Json(json!({
        "node_id": state.flow.node_id(),
        "summary": ResourceSummary::of(&resources),
        "resources": resources,
    }))
}

/// Runs every resource's health check now.
pub async fn health(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let resources = state.registry.list();
    let reports = join_all(resources.iter().map(|r| r.check_health())).await;
    let healthy = reports.iter().filter(|r| r.healthy).count();
    Json(json!({
        "node_id": state.flow.node_id(),
        "checked": reports.iter().filter(|r| r.checked).count(),
        "healthy": healthy,
        "results": reports,
    }))
}

/// The full report (docs/resource-report.md, schema version 1).
pub async fn report(State(state): State<ApiState>) -> Json<serde_json::Value> {
    // A GET must not start anything: the monitor's rounds only when it is running.
    let running = state.monitor.as_ref().filter(|m| m.state().is_usable());
    let report = match running {
        Some(monitor) => match monitor.ensure_ready().await {
            Ok(monitor) => monitor.report(),
            Err(_) => ResourceReport::of_registry(&state.registry, None),
        },
        None => ResourceReport::of_registry(&state.registry, None),
    };
    Json(report.to_json())
}

#[derive(Debug, Deserialize)]
pub struct ResetQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Resets one resource (back to Uninitialized, then initialize) and returns its state.
pub async fn reset(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<ResetQuery>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let found = state.registry.find(&id, query.kind.as_deref());
    let resource = match found.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(ApiError::not_found(match &query.kind {
                Some(kind) => format!("no resource '{id}' of type '{kind}'"),
                None => format!("no resource '{id}'"),
            }));
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "several resources are named '{id}': give ?type="
            )));
        }
    };
    let outcome = resource.reset().await;
    let snapshot = resource.snapshot();
    let (status, error) = match outcome {
        Ok(()) => (StatusCode::OK, None),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, Some(error.to_string())),
    };
    Ok((
        status,
        Json(json!({ "reset": error.is_none(), "error": error, "resource": snapshot })),
    ))
}

/// Starts draining the node: its peers move their requests off it, it finishes its own,
/// then it stops (bounded by `--drain-timeout-secs`). Answers at once with what still
/// holds the node; `GET` the same path to follow it.
pub async fn drain(State(state): State<ApiState>) -> (StatusCode, Json<serde_json::Value>) {
    state.flow.start_draining();
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "node_id": state.flow.node_id(),
            "drain": state.flow.drain_status().await,
        })),
    )
}

/// What still holds a draining node.
pub async fn drain_status(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({
        "node_id": state.flow.node_id(),
        "drain": state.flow.drain_status().await,
    }))
}

/// The faults this node injects now (a node started with `--enable-fault-injection`;
/// 404 elsewhere, see `crate::faults`).
pub async fn faults(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let faults = injected(&state)?;
    Ok(Json(
        json!({ "node_id": state.flow.node_id(), "faults": faults.report() }),
    ))
}

/// Sets the switches the body names (`{"fail_engine": true}`) and reports them all.
pub async fn set_faults(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let faults = injected(&state)?;
    let settings: crate::faults::FaultSettings = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a fault setting: {e}")))?;
    faults.apply(&settings);
    Ok(Json(
        json!({ "node_id": state.flow.node_id(), "faults": faults.report() }),
    ))
}

fn injected(state: &ApiState) -> Result<&std::sync::Arc<crate::faults::Faults>, ApiError> {
    state.flow.faults().ok_or_else(|| {
        ApiError::not_found(
            "fault injection is off on this node (it is only for tests: exo node --enable-fault-injection)",
        )
    })
}
