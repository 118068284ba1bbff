//! Time of one hop of the ring for a hidden state: serialize, send over loopback gRPC,
//! receive, deserialize (until the receiving node has the tensor in hand).
//!
//!   cargo bench --bench hop
//!
//! Prints the median and the 10th/90th percentiles over many hops, for a decode step (one
//! token) and a prompt (37 tokens) of SmolLM2-135M (hidden size 576), and for a 4096-wide
//! model.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU16;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use exo::peer::{GrpcPeerHandle, PeerTimeouts};
use exo::proto::{encode_tensor, pb};
use exo::resource::Managed;
use exo::server::GrpcServer;
use exo::topology::{Partition, PartitionEntry};
use futures::FutureExt;

#[path = "../tests/support/stand_in.rs"]
mod stand_in;
use stand_in::{StandIn, greedy_context};

fn context() -> pb::RequestContext {
    let plan = Partition {
        model_id: "bench".into(),
        n_layers: 2,
        entries: vec![
            PartitionEntry {
                node_id: "sender".into(),
                address: "127.0.0.1:1".into(),
                start_layer: 0,
                followers: Vec::new(),
                end_layer: 1,
            },
            PartitionEntry {
                node_id: "receiver".into(),
                address: "127.0.0.1:1".into(),
                start_layer: 1,
                followers: Vec::new(),
                end_layer: 2,
            },
        ],
    };
    greedy_context("bench", "sender", plan, 1, 1)
}

#[tokio::main]
async fn main() {
    let (receiver, mut received) = StandIn::new("receiver").capturing();
    let server = Managed::new(
        "grpc_server",
        GrpcServer::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::new(receiver),
            Arc::new(AtomicU16::new(0)),
        ),
    );
    let address = server.ensure_ready().await.unwrap().local_addr().unwrap();
    let handle = Managed::new(
        "peer:receiver",
        GrpcPeerHandle::new("receiver", address.to_string(), PeerTimeouts::default()),
    );
    handle.initialize().await.unwrap();
    println!("hop = serialize + send + receive + deserialize, over loopback gRPC");
    for (label, tokens, hidden) in [
        ("decode step", 1, 576),
        ("37-token prompt", 37, 576),
        ("decode, 4096 wide", 1, 4096),
    ] {
        let tensor = Tensor::ones((1, tokens, hidden), DType::F32, &Device::Cpu).unwrap();
        let mut samples = Vec::new();
        for i in 0..1100 {
            let started = Instant::now();
            let message = pb::StepBatch {
                items: vec![pb::StepItem {
                    context: Some(context()),
                    input: Some(pb::step_item::Input::Tensor(
                        encode_tensor(&tensor).unwrap(),
                    )),
                }],
            };
            handle
                .with_connection("SendSteps", |peer| peer.send_steps(message.clone()).boxed())
                .await
                .unwrap();
            let (_, arrived) = received.recv().await.unwrap();
            if i >= 100 {
                samples.push(arrived - started);
            }
        }
        samples.sort();
        let pct = |p: usize| samples[samples.len() * p / 100];
        println!(
            "{label:>18} ({:>7} bytes): median {:>6.1} µs  (p10 {:.1}, p90 {:.1})",
            tokens * hidden * 4,
            micros(pct(50)),
            micros(pct(10)),
            micros(pct(90))
        );
    }
    server.cleanup().await.unwrap();
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
