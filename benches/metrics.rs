//! How long `GET /metrics` takes on a node with 64 joined peers.
//!
//!   cargo bench --bench metrics
//!
//! Starts 64 stand-in peers (real gRPC servers on loopback that answer health checks as
//! their node id), a real node (engine with the default model, API) whose peers file names
//! them, waits until all 64 have joined, and times scrapes over HTTP: the median and the
//! 90th/99th percentiles of 500, after 50 to warm up. The goal (issue 14): ≤ 5 ms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU16;
use std::time::{Duration, Instant};

use exo::app::{DiscoveryMode, Node, NodeConfig};
use exo::catalog::{ModelFormat, ResolvedModel};
use exo::engine::DeviceChoice;
use exo::resource::Managed;
use exo::server::GrpcServer;

#[path = "../tests/support/stand_in.rs"]
mod stand_in;
use stand_in::StandIn;

const PEERS: usize = 64;

fn model_path() -> std::path::PathBuf {
    let dir = std::env::var_os("EXO_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/weights"));
    let path = dir
        .join("smollm2-135m")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh first",
        path.display()
    );
    path
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    let mut peers = serde_json::Map::new();
    for i in 0..PEERS {
        let id = format!("peer-{i:02}");
        let server = Managed::new(
            "grpc_server",
            GrpcServer::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Arc::new(StandIn::new(id.clone())),
                Arc::new(AtomicU16::new(0)),
            ),
        );
        let address = server.ensure_ready().await.unwrap().local_addr().unwrap();
        peers.insert(id, address.to_string().into());
        servers.push(server);
    }
    let peers_file = dir.path().join("peers.json");
    std::fs::write(
        &peers_file,
        serde_json::json!({ "peers": peers }).to_string(),
    )
    .unwrap();

    let mut config = NodeConfig::new(ResolvedModel {
        id: "smollm2-135m".into(),
        path: model_path(),
        format: ModelFormat::Gguf,
    });
    config.device = DeviceChoice::Cpu;
    config.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.data_dir = Some(dir.path().join("node"));
    config.node_id = Some("bench".into());
    config.discovery = DiscoveryMode::Manual(peers_file);
    let node = Node::start(config).await.unwrap();
    let mut joined = node.peers.subscribe();
    tokio::time::timeout(
        Duration::from_secs(60),
        joined.wait_for(|p| p.iter().filter(|p| p.is_joined()).count() == PEERS),
    )
    .await
    .expect("the 64 peers did not join")
    .unwrap();

    let url = format!("http://127.0.0.1:{}/metrics", node.api_port());
    let samples = tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().build();
        let mut samples = Vec::new();
        let mut size = 0;
        for i in 0..550 {
            let started = Instant::now();
            let body = agent.get(&url).call().unwrap().into_string().unwrap();
            let took = started.elapsed();
            size = body.len();
            if i >= 50 {
                samples.push(took);
            }
        }
        (samples, size)
    })
    .await
    .unwrap();
    let (mut samples, size) = samples;
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "GET /metrics with {PEERS} joined peers ({size} bytes): median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        at(0.5),
        at(0.9),
        at(0.99)
    );
    node.shutdown().await.unwrap();
    for server in servers {
        let _ = server.cleanup().await;
    }
}
