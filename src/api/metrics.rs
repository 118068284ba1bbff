//! `GET /metrics`: the node in the Prometheus text format. Everything is read from where
//! it is already kept — the flow's counters, the limiter, the engine's caches and batch
//! timings, every resource's snapshot (peer links included), the weight supply — so a
//! scrape adds no bookkeeping to the paths it measures.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::state::ApiState;
use crate::engine::serve::prefix_cache::PrefixStats;
use crate::metrics::{Exposition, Kind};
use crate::resource::{ResourceSnapshot, ResourceState};

/// The content type of the text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(state): State<ApiState>) -> Response {
    let text = render(&state).await;
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    response
}

/// The whole scrape.
pub async fn render(state: &ApiState) -> String {
    let mut out = Exposition::new();
    let node_id = state.flow.node_id();
    out.family(
        "exo_node_info",
        Kind::Gauge,
        "This node: its id and model (always 1).",
    )
    .sample(
        "exo_node_info",
        &[("node_id", node_id), ("model", state.flow.model_id())],
        1.0,
    );
    requests(state, &mut out);
    connections(state, &mut out);
    tokens(state, &mut out);
    engine(state, &mut out).await;
    let snapshots: Vec<ResourceSnapshot> =
        state.registry.list().iter().map(|r| r.snapshot()).collect();
    resources(&snapshots, &mut out);
    peers(&snapshots, &mut out);
    weights(state, &mut out);
    out.finish()
}

fn requests(state: &ApiState, out: &mut Exposition) {
    let flow = state.flow.stats();
    out.family(
        "exo_requests_started_total",
        Kind::Counter,
        "Generations this node started as the origin.",
    )
    .sample(
        "exo_requests_started_total",
        &[],
        flow.requests_started as f64,
    );
    out.family(
        "exo_requests_total",
        Kind::Counter,
        "Requests by outcome: generations this node originated that finished, failed or were cancelled, and chat requests refused with 429.",
    );
    for (outcome, count) in [
        ("finished", flow.requests_finished),
        ("failed", flow.requests_failed),
        ("cancelled", flow.requests_cancelled),
        ("rejected", state.limiter.rejected()),
    ] {
        out.sample("exo_requests_total", &[("outcome", outcome)], count as f64);
    }
    out.family(
        "exo_active_requests",
        Kind::Gauge,
        "Generations this node originated that are running now.",
    )
    .sample(
        "exo_active_requests",
        &[],
        state.flow.active_requests() as f64,
    );
    out.family(
        "exo_api_requests_in_flight",
        Kind::Gauge,
        "Chat requests holding one of the API's slots now.",
    )
    .sample(
        "exo_api_requests_in_flight",
        &[],
        state.limiter.in_flight() as f64,
    );
    out.family(
        "exo_queue_depth",
        Kind::Gauge,
        "Chat requests waiting for a slot of the API's limiter.",
    )
    .sample("exo_queue_depth", &[], state.limiter.queued() as f64);
    out.family(
        "exo_event_streams",
        Kind::Gauge,
        "/v1/events streams open now (capped by --max-event-streams).",
    )
    .sample(
        "exo_event_streams",
        &[],
        state.limiter.event_streams() as f64,
    );
    out.family(
        "exo_event_streams_rejected_total",
        Kind::Counter,
        "/v1/events streams refused with 429 for being past the cap.",
    )
    .sample(
        "exo_event_streams_rejected_total",
        &[],
        state.limiter.event_streams_rejected() as f64,
    );
    for (name, help, value) in [
        (
            "exo_steps_total",
            "Steps this node's shards ran.",
            flow.steps_run,
        ),
        (
            "exo_step_errors_total",
            "Steps that failed on this node.",
            flow.step_errors,
        ),
        (
            "exo_plans_refused_total",
            "Steps and results refused for naming a node that has not proven the cluster key.",
            flow.plans_refused,
        ),
        (
            "exo_replans_total",
            "Times a request this node originated was planned again after losing a node.",
            flow.replans,
        ),
        (
            "exo_steps_refused_draining_total",
            "Steps of new requests refused while this node drained.",
            flow.refused_draining,
        ),
    ] {
        out.family(name, Kind::Counter, help)
            .sample(name, &[], value as f64);
    }
}

/// The connection caps of the API and gRPC servers at work (`crate::listener`).
fn connections(state: &ApiState, out: &mut Exposition) {
    let gates: Vec<_> = state
        .connections
        .iter()
        .map(|g| (g.server(), g.stats()))
        .collect();
    out.family(
        "exo_connections",
        Kind::Gauge,
        "Connections each server (api, grpc) holds now.",
    );
    for (server, stats) in &gates {
        out.sample("exo_connections", &[("server", server)], stats.open as f64);
    }
    out.family(
        "exo_connections_accepted_total",
        Kind::Counter,
        "Connections each server admitted.",
    );
    for (server, stats) in &gates {
        out.sample(
            "exo_connections_accepted_total",
            &[("server", server)],
            stats.accepted as f64,
        );
    }
    out.family(
        "exo_connections_refused_total",
        Kind::Counter,
        "Connections closed at once for a cap: the server's (--max-connections) or their address's (--max-connections-per-ip).",
    );
    for (server, stats) in &gates {
        for (reason, count) in [
            ("server_cap", stats.refused_server_cap),
            ("ip_cap", stats.refused_ip_cap),
        ] {
            out.sample(
                "exo_connections_refused_total",
                &[("server", server), ("reason", reason)],
                count as f64,
            );
        }
    }
    out.family(
        "exo_connections_timed_out_total",
        Kind::Counter,
        "Connections closed for staying silent past --connection-timeout-secs (no request headers, no first bytes, an idle keep-alive).",
    );
    for (server, stats) in &gates {
        out.sample(
            "exo_connections_timed_out_total",
            &[("server", server)],
            stats.timed_out as f64,
        );
    }
    out.family(
        "exo_tls_handshake_failures_total",
        Kind::Counter,
        "TLS handshakes of the gRPC server that failed (no certificate of the cluster, not TLS) or did not finish in time.",
    );
    for (server, stats) in gates.iter().filter(|(s, _)| *s == "grpc") {
        for (reason, count) in [
            ("failed", stats.tls_failed),
            ("timed_out", stats.tls_timed_out),
        ] {
            out.sample(
                "exo_tls_handshake_failures_total",
                &[("server", server), ("reason", reason)],
                count as f64,
            );
        }
    }
    out.family(
        "exo_connection_accept_errors_total",
        Kind::Counter,
        "Failures of accept itself (above all: out of file descriptors).",
    );
    for (server, stats) in &gates {
        out.sample(
            "exo_connection_accept_errors_total",
            &[("server", server)],
            stats.accept_errors as f64,
        );
    }
}

fn tokens(state: &ApiState, out: &mut Exposition) {
    let timing = &state.timing;
    out.family(
        "exo_prompt_tokens_total",
        Kind::Counter,
        "Prompt tokens of the finished generations this node's API served.",
    )
    .sample(
        "exo_prompt_tokens_total",
        &[],
        timing.prompt_tokens.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "exo_generated_tokens_total",
        Kind::Counter,
        "Tokens generated for the finished generations this node's API served.",
    )
    .sample(
        "exo_generated_tokens_total",
        &[],
        timing.generated_tokens.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "exo_time_to_first_token_seconds",
        Kind::Histogram,
        "From a request's acceptance to its first text.",
    )
    .histogram(
        "exo_time_to_first_token_seconds",
        &[],
        &timing.time_to_first_token,
    );
    out.family(
        "exo_inter_token_latency_seconds",
        Kind::Histogram,
        "Between two pieces of a generation's text.",
    )
    .histogram("exo_inter_token_latency_seconds", &[], &timing.inter_token);
}

/// The prefix cache's blocks and what they saved.
fn prefix_cache(stats: &PrefixStats, out: &mut Exposition) {
    let gauges = [
        (
            "exo_prefix_cache_bytes",
            "Bytes held by this node's prefix cache (KV of recent prompts' blocks).",
            stats.bytes as f64,
        ),
        (
            "exo_prefix_cache_blocks",
            "Blocks in this node's prefix cache (per layer range).",
            stats.blocks as f64,
        ),
        (
            "exo_prefix_cache_budget_bytes",
            "What the prefix cache may hold (--prefix-cache-bytes).",
            stats.budget_bytes as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, Kind::Gauge, help).sample(name, &[], value);
    }
    let counters = [
        (
            "exo_prefix_cache_hits_total",
            "Requests whose prefix this node restored from its prefix cache.",
            stats.hits,
        ),
        (
            "exo_prefix_cache_misses_total",
            "Requests that named a prefix this node no longer held.",
            stats.misses,
        ),
        (
            "exo_prefix_cache_reused_tokens_total",
            "Prompt tokens this node did not prefill thanks to the prefix cache.",
            stats.reused_tokens,
        ),
        (
            "exo_prefix_cache_stored_blocks_total",
            "Blocks taken into the prefix cache.",
            stats.stored_blocks,
        ),
        (
            "exo_prefix_cache_evictions_total",
            "Blocks evicted from the prefix cache to stay within its budget.",
            stats.evictions,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, Kind::Counter, help)
            .sample(name, &[], value as f64);
    }
}

/// KV caches and batch times, when the engine is ready (a scrape never starts it).
async fn engine(state: &ApiState, out: &mut Exposition) {
    let model = match state.engine.state() {
        ResourceState::Ready => match state.engine.ensure_ready().await {
            Ok(engine) => engine.model().ok(),
            Err(_) => None,
        },
        _ => None,
    };
    let (bytes, entries) = model
        .as_ref()
        .map_or((0, 0), |m| (m.cache_bytes(), m.active_requests()));
    out.family(
        "exo_kv_cache_bytes",
        Kind::Gauge,
        "Bytes held by this node's KV caches.",
    )
    .sample("exo_kv_cache_bytes", &[], bytes as f64);
    out.family(
        "exo_kv_cache_entries",
        Kind::Gauge,
        "KV caches (one per request and layer range) on this node.",
    )
    .sample("exo_kv_cache_entries", &[], entries as f64);
    prefix_cache(
        &model.as_ref().map(|m| m.prefix_stats()).unwrap_or_default(),
        out,
    );
    super::group_metrics::tensor_groups(model.as_deref(), out);
    out.family(
        "exo_batch_panics_total",
        Kind::Counter,
        "Batches that panicked on this node (their steps failed, the batcher went on).",
    )
    .sample(
        "exo_batch_panics_total",
        &[],
        model.as_ref().map_or(0, |m| m.batcher().panics()) as f64,
    );
    out.family(
        "exo_step_duration_seconds",
        Kind::Histogram,
        "How long a batch of steps took on this node, per shard (layer range).",
    );
    if let Some(model) = model {
        for (start, end, histogram) in model.batcher().step_times() {
            let shard = format!("{start}..{end}");
            out.histogram(
                "exo_step_duration_seconds",
                &[("shard", &shard)],
                &histogram,
            );
        }
    }
}

fn resources(snapshots: &[ResourceSnapshot], out: &mut Exposition) {
    out.family(
        "exo_resource_state",
        Kind::Gauge,
        "1 for the state each resource is in, 0 for the others.",
    );
    for r in snapshots {
        for s in ResourceState::ALL {
            out.sample(
                "exo_resource_state",
                &[("id", &r.id), ("type", &r.kind), ("state", s.as_str())],
                if r.state == s { 1.0 } else { 0.0 },
            );
        }
    }
    out.family(
        "exo_resource_errors_total",
        Kind::Counter,
        "Errors each resource recorded (initialize, health, reconnect, operations).",
    );
    for r in snapshots {
        out.sample(
            "exo_resource_errors_total",
            &[("id", &r.id), ("type", &r.kind)],
            r.stats.errors as f64,
        );
    }
    out.family(
        "exo_resource_health_failures_total",
        Kind::Counter,
        "Failed health checks of each resource.",
    );
    for r in snapshots {
        out.sample(
            "exo_resource_health_failures_total",
            &[("id", &r.id), ("type", &r.kind)],
            r.stats.health_failures as f64,
        );
    }
}

/// Per peer link, from each peer handle's snapshot.
fn peers(snapshots: &[ResourceSnapshot], out: &mut Exposition) {
    let links: Vec<(&str, &serde_json::Value)> = snapshots
        .iter()
        .filter(|r| r.kind == "peer_handle")
        .filter_map(|r| Some((r.info["node_id"].as_str()?, r.info.get("link")?)))
        .collect();
    let families: [(&str, Kind, &str, &str, f64); 4] = [
        (
            "exo_peer_rtt_seconds",
            Kind::Gauge,
            "Round trip of the latest health check of each peer.",
            "rtt_ms",
            1e-3,
        ),
        (
            "exo_peer_hop_errors_total",
            Kind::Counter,
            "Calls to each peer that failed.",
            "errors",
            1.0,
        ),
        (
            "exo_peer_sent_bytes_total",
            Kind::Counter,
            "Bytes of the steps and results sent to each peer.",
            "bytes_sent",
            1.0,
        ),
        (
            "exo_peer_received_bytes_total",
            Kind::Counter,
            "Bytes of each peer's replies.",
            "bytes_received",
            1.0,
        ),
    ];
    for (name, kind, help, field, scale) in families {
        out.family(name, kind, help);
        for (peer, link) in &links {
            if let Some(value) = link[field].as_f64() {
                out.sample(name, &[("peer", peer)], value * scale);
            }
        }
    }
}

/// Weight bytes moved by the supply, and downloads from the Hub running now.
fn weights(state: &ApiState, out: &mut Exposition) {
    let supply = state.flow.supply();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    out.family(
        "exo_weight_bytes_total",
        Kind::Counter,
        "Weight bytes this node received from peers or the Hub, or served to peers.",
    );
    if let Some(supply) = supply {
        let stats = supply.stats();
        out.sample(
            "exo_weight_bytes_total",
            &[("source", "peers")],
            load(&stats.bytes_from_peers),
        )
        .sample(
            "exo_weight_bytes_total",
            &[("source", "hub")],
            load(&stats.bytes_from_hub),
        )
        .sample(
            "exo_weight_bytes_total",
            &[("source", "served")],
            load(&stats.bytes_served),
        );
    }
    out.family(
        "exo_weight_transfers_total",
        Kind::Counter,
        "Weight transfers from peers, by outcome.",
    );
    if let Some(supply) = supply {
        let stats = supply.stats();
        out.sample(
            "exo_weight_transfers_total",
            &[("outcome", "ok")],
            load(&stats.peer_transfers),
        )
        .sample(
            "exo_weight_transfers_total",
            &[("outcome", "failed")],
            load(&stats.failed_transfers),
        );
    }
    out.family(
        "exo_download_bytes",
        Kind::Gauge,
        "Bytes fetched so far and to fetch, of each download from the Hub running now.",
    );
    if let Some(supply) = supply {
        for download in supply.downloads() {
            if download.state != crate::catalog::DownloadState::Running {
                continue;
            }
            for (kind, value) in [
                ("done", download.bytes_done),
                ("total", download.bytes_total),
            ] {
                out.sample(
                    "exo_download_bytes",
                    &[("what", &download.what), ("kind", kind)],
                    value as f64,
                );
            }
        }
    }
}
