//! Hidden states over real gRPC: exact round trips up to 64 MiB (f16 and bf16 arrive as
//! the f32 values they hold), and refused bad tensors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU16;

use candle_core::{DType, Device, Tensor};
use exo::engine::HiddenState;
use exo::peer::{GrpcPeerHandle, PeerTimeouts};
use exo::proto::{encode_tensor, pb};
use exo::resource::Managed;
use exo::server::GrpcServer;
use exo::topology::{Partition, PartitionEntry};
use futures::FutureExt;
use tokio::sync::mpsc;
use tonic::Status;

use crate::support::stand_in::{StandIn, greedy_context};

fn plan(nodes: &[&str]) -> Partition {
    let per = 30 / nodes.len();
    Partition {
        model_id: "smollm2-135m".into(),
        n_layers: 30,
        entries: nodes
            .iter()
            .enumerate()
            .map(|(i, id)| PartitionEntry {
                node_id: id.to_string(),
                address: "127.0.0.1:1".into(),
                start_layer: i * per,
                followers: Vec::new(),
                end_layer: if i + 1 == nodes.len() {
                    30
                } else {
                    (i + 1) * per
                },
            })
            .collect(),
    }
}

pub fn context(request_id: &str, nodes: &[&str], index: usize) -> pb::RequestContext {
    greedy_context(request_id, nodes[0], plan(nodes), index, 0)
}

async fn sink() -> (
    Arc<Managed<GrpcServer>>,
    Arc<Managed<GrpcPeerHandle>>,
    mpsc::UnboundedReceiver<(HiddenState, std::time::Instant)>,
) {
    let (stand_in, rx) = StandIn::new("sink").refusing_results().capturing();
    let server = Managed::new(
        "grpc_server",
        GrpcServer::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::new(stand_in),
            Arc::new(AtomicU16::new(0)),
        ),
    );
    let address = server.ensure_ready().await.unwrap().local_addr().unwrap();
    let timeouts = PeerTimeouts {
        call: std::time::Duration::from_secs(30),
        ..PeerTimeouts::default()
    };
    let handle = Managed::new(
        "peer:sink",
        GrpcPeerHandle::new("sink", address.to_string(), timeouts),
    );
    handle.initialize().await.unwrap();
    (server, handle, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_states_round_trip_exactly_in_f32_f16_and_bf16_up_to_64_mib() {
    let (server, handle, mut received) = sink().await;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Up to 64 MiB of data: 16M f32 values, 32M half-precision ones.
        let largest = (64 << 20) / dtype.size_in_bytes();
        for (tokens, hidden) in [(1, 576), (37, 576), (largest / 1024, 1024)] {
            let elements = tokens * hidden;
            let tensor = Tensor::arange(0u32, elements as u32, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .affine(1e-3, -7.5)
                .unwrap()
                .sin()
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .reshape((1, tokens, hidden))
                .unwrap();
            let message = pb::StepBatch {
                items: vec![pb::StepItem {
                    context: Some(context("r", &["origin", "sink"], 1)),
                    input: Some(pb::step_item::Input::Tensor(
                        encode_tensor(&tensor).unwrap(),
                    )),
                }],
            };
            let refused = handle
                .with_connection("SendSteps", |peer| peer.send_steps(message.clone()).boxed())
                .await
                .unwrap();
            assert_eq!(refused, vec![String::new()]);
            let (back, _) = received.recv().await.unwrap();
            assert_eq!((back.rows, back.cols), (tokens, hidden));
            let sent: Vec<f32> = tensor
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                back.data == sent,
                "{dtype:?} × {elements} changed on the way"
            );
        }
    }
    server.cleanup().await.unwrap();
}

#[tokio::test]
async fn bad_tensors_and_plans_are_refused_item_by_item_and_the_server_keeps_serving() {
    let (server, handle, mut received) = sink().await;
    let peer = handle.ensure_ready().await.unwrap();
    let good =
        encode_tensor(&Tensor::zeros((1, 2, 576), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let step = |tensor: Option<pb::Tensor>, nodes: &[&str], index: usize| pb::StepItem {
        context: Some(context("r", nodes, index)),
        input: tensor.map(pb::step_item::Input::Tensor),
    };
    let mut short = good.clone();
    short.data = short.data.slice(..100);
    let mut unknown = good.clone();
    unknown.dtype = 42;
    let mut overflow = good.clone();
    overflow.shape = vec![u64::MAX, u64::MAX];
    let mut broken_plan = step(Some(good.clone()), &["origin", "sink"], 1);
    broken_plan
        .context
        .as_mut()
        .unwrap()
        .plan
        .as_mut()
        .unwrap()
        .entries[0]
        .end_layer = 12;
    let items = vec![
        step(Some(short), &["origin", "sink"], 1),
        step(Some(unknown), &["origin", "sink"], 1),
        step(Some(overflow), &["origin", "sink"], 1),
        step(Some(good.clone()), &["a", "b"], 1),
        broken_plan,
        pb::StepItem {
            context: None,
            input: Some(pb::step_item::Input::Tensor(good.clone())),
        },
        step(None, &["origin", "sink"], 1),
        step(Some(good.clone()), &["sink"], 0),
        // The one good item among them goes through.
        step(Some(good.clone()), &["origin", "sink"], 1),
    ];
    let errors = peer.send_steps(pb::StepBatch { items }).await.unwrap();
    let expected = [
        "needs 4608 bytes, but 100 arrived",
        "unknown tensor dtype 42",
        "shape",
        "does not include node sink",
        "partition plan",
        "no request context",
        "neither tokens nor a tensor",
        "first shard",
    ];
    assert_eq!(errors.len(), 9);
    for (error, wanted) in errors.iter().zip(expected) {
        assert!(error.contains(wanted), "{error:?} should say {wanted:?}");
    }
    assert_eq!(errors[8], "", "the good item is accepted");
    assert_eq!((received.recv().await.unwrap().0.rows), 2);

    let code = |error: anyhow::Error| {
        error
            .chain()
            .find_map(|c| c.downcast_ref::<Status>())
            .map(|s| (s.code(), s.message().to_string()))
            .unwrap()
    };
    // An empty batch, and one past the cap, are refused whole.
    let (status, _) = code(
        peer.send_steps(pb::StepBatch { items: vec![] })
            .await
            .unwrap_err(),
    );
    assert_eq!(status, tonic::Code::InvalidArgument);
    let many =
        vec![step(Some(good.clone()), &["origin", "sink"], 1); exo::server::MAX_BATCH_ITEMS + 1];
    let (status, message) = code(
        peer.send_steps(pb::StepBatch { items: many })
            .await
            .unwrap_err(),
    );
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("batch"), "{message}");

    let result = pb::ResultItem {
        context: Some(context("nobody-waits", &["sink"], 0)),
        node_id: "x".into(),
        outcome: Some(pb::result_item::Outcome::Token(3)),
        logprobs: None,
    };
    let errors = peer
        .send_results(pb::ResultBatch {
            items: vec![result],
        })
        .await
        .unwrap();
    assert!(
        errors[0].contains("unknown request id nobody-waits"),
        "{errors:?}"
    );

    // Still serving, and it counted what it refused.
    assert_eq!(
        handle.check_health().await.state,
        exo::resource::ResourceState::Ready
    );
    assert!(server.ensure_ready().await.unwrap().rejected_messages() >= 10);
    server.cleanup().await.unwrap();
}
