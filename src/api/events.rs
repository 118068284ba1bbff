//! `GET /v1/events`: the node's state for the web UI, pushed as server-sent events. The
//! first event carries the whole state; after that an event goes out whenever something
//! the page shows changed (a resource's state or error, a peer joining or leaving, the
//! plan, a link's round trip, a download's progress), checked four times a second on the
//! server, so the page never polls.
//!
//! Each event is `event: cluster`, `data: {...}` with the topology of `/v1/topology` plus
//! `resources` (every resource's id, type, state, last error), `links` (round trip per
//! peer), `engine` (shards loaded here, KV cache) and `downloads`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use tokio::sync::mpsc;

use super::info::topology_json;
use super::state::ApiState;
use crate::resource::ResourceState;

/// How often the state is compared with what was last sent.
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub async fn events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(4);
    let mut shutting_down = state.shutting_down.clone();
    tokio::spawn(async move {
        let mut last = String::new();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = async { let _ = shutting_down.wait_for(|down| *down).await; } => return,
                _ = tx.closed() => return,
            }
            let now = cluster_state(&state).await.to_string();
            if now != last {
                if tx
                    .send(Event::default().event("cluster").data(&now))
                    .await
                    .is_err()
                {
                    return;
                }
                last = now;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Sse::new(futures::StreamExt::map(stream, Ok)).keep_alive(KeepAlive::default())
}

/// Everything the cluster view shows, as of now.
pub async fn cluster_state(state: &ApiState) -> serde_json::Value {
    let mut body = topology_json(state).await;
    let snapshots: Vec<_> = state.registry.list().iter().map(|r| r.snapshot()).collect();
    let resources: Vec<serde_json::Value> = snapshots
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "type": r.kind,
                "name": r.name,
                "state": r.state,
                "problem": matches!(r.state, ResourceState::Degraded | ResourceState::Error),
                "last_error": r.last_error,
                "errors": r.stats.errors,
            })
        })
        .collect();
    let links: serde_json::Map<String, serde_json::Value> = snapshots
        .iter()
        .filter(|r| r.kind == "peer_handle")
        .filter_map(|r| {
            Some((
                r.info["node_id"].as_str()?.to_string(),
                r.info.get("link")?.clone(),
            ))
        })
        .collect();
    let engine = snapshots
        .iter()
        .find(|r| r.kind == "inference_engine")
        .map(|r| {
            json!({
                "state": r.state,
                "device": r.info.get("device"),
                "loaded_shards": r.info.get("loaded_shards"),
                "kv_cache_bytes": r.info.get("kv_cache_bytes"),
                "active_requests": r.info.get("active_requests"),
            })
        });
    let downloads = state
        .flow
        .supply()
        .map(|s| serde_json::to_value(s.downloads()).unwrap_or_default())
        .unwrap_or_else(|| json!([]));
    if let Some(object) = body.as_object_mut() {
        object.insert("model".into(), json!(state.flow.model_id()));
        object.insert("resources".into(), json!(resources));
        object.insert("links".into(), json!(links));
        object.insert("engine".into(), json!(engine));
        object.insert("downloads".into(), downloads);
    }
    body
}
