//! Hidden states over real gRPC: exact round trips up to 64 MiB (f16 and bf16 arrive as
//! the f32 values they hold), and refused bad tensors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU16;

use candle_core::{DType, Device, Tensor};
use exo::engine::{HiddenState, SamplingParams};
use exo::peer::{GrpcPeerHandle, PeerTimeouts};
use exo::proto::{encode_tensor, pb};
use exo::resource::Managed;
use exo::server::{GrpcServer, NodeHandler, StepInput, StepOutcome, ValidatedContext};
use exo::topology::{Partition, PartitionEntry};
use futures::FutureExt;
use tokio::sync::mpsc;
use tonic::Status;

/// A node that only keeps what arrives.
struct Capture {
    received: mpsc::UnboundedSender<HiddenState>,
}

#[tonic::async_trait]
impl NodeHandler for Capture {
    fn node_id(&self) -> String {
        "sink".into()
    }
    async fn run_step(&self, _context: ValidatedContext, input: StepInput) -> Result<(), Status> {
        if let StepInput::Hidden(tensor) = input {
            let _ = self.received.send(tensor);
        }
        Ok(())
    }
    async fn step_result(
        &self,
        context: ValidatedContext,
        _: String,
        _: StepOutcome,
    ) -> Result<(), Status> {
        Err(Status::not_found(format!(
            "unknown request id {}",
            context.request_id
        )))
    }
    async fn topology(&self) -> Result<pb::TopologyResponse, Status> {
        Ok(pb::TopologyResponse::default())
    }
    async fn status(&self, _: pb::StatusMessage) -> Result<(), Status> {
        Ok(())
    }
    async fn finish(&self, _: String, _: String) -> Result<(), Status> {
        Ok(())
    }
}

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
    exo::node::to_wire(&ValidatedContext {
        request_id: request_id.into(),
        origin_node_id: nodes[0].into(),
        origin_address: "127.0.0.1:1".into(),
        plan: plan(nodes),
        index,
        sampling: SamplingParams::greedy(),
        position: 0,
        step: 0,
    })
}

async fn sink() -> (
    Arc<Managed<GrpcServer>>,
    Arc<Managed<GrpcPeerHandle>>,
    mpsc::UnboundedReceiver<HiddenState>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Managed::new(
        "grpc_server",
        GrpcServer::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::new(Capture { received: tx }),
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
            let message = pb::TensorRequest {
                context: Some(context("r", &["origin", "sink"], 1)),
                tensor: Some(encode_tensor(&tensor).unwrap()),
            };
            handle
                .with_connection("SendTensor", |peer| {
                    peer.send_tensor(message.clone()).boxed()
                })
                .await
                .unwrap();
            let back = received.recv().await.unwrap();
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
async fn bad_tensors_and_plans_are_refused_with_invalid_argument_and_the_server_keeps_serving() {
    let (server, handle, _received) = sink().await;
    let peer = handle.ensure_ready().await.unwrap();
    let good =
        encode_tensor(&Tensor::zeros((1, 2, 576), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let send = |tensor: pb::Tensor, nodes: &[&str], index: usize| pb::TensorRequest {
        context: Some(context("r", nodes, index)),
        tensor: Some(tensor),
    };
    let code = |error: anyhow::Error| {
        error
            .chain()
            .find_map(|c| c.downcast_ref::<Status>())
            .map(|s| (s.code(), s.message().to_string()))
            .unwrap()
    };

    let mut short = good.clone();
    short.data = short.data.slice(..100);
    let (status, message) = code(
        peer.send_tensor(send(short, &["origin", "sink"], 1))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(
        message.contains("needs 4608 bytes, but 100 arrived"),
        "{message}"
    );

    let mut unknown = good.clone();
    unknown.dtype = 42;
    let (status, message) = code(
        peer.send_tensor(send(unknown, &["origin", "sink"], 1))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("unknown tensor dtype 42"), "{message}");

    let mut overflow = good.clone();
    overflow.shape = vec![u64::MAX, u64::MAX];
    let (status, message) = code(
        peer.send_tensor(send(overflow, &["origin", "sink"], 1))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("shape"), "{message}");

    let (status, message) = code(
        peer.send_tensor(send(good.clone(), &["a", "b"], 1))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("does not include node sink"), "{message}");

    let mut broken_plan = send(good.clone(), &["origin", "sink"], 1);
    broken_plan
        .context
        .as_mut()
        .unwrap()
        .plan
        .as_mut()
        .unwrap()
        .entries[0]
        .end_layer = 12;
    let (status, message) = code(peer.send_tensor(broken_plan).await.unwrap_err());
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("partition plan"), "{message}");

    let missing = pb::TensorRequest {
        context: None,
        tensor: Some(good.clone()),
    };
    let (status, _) = code(peer.send_tensor(missing).await.unwrap_err());
    assert_eq!(status, tonic::Code::InvalidArgument);

    let result = pb::ResultRequest {
        context: Some(context("nobody-waits", &["sink"], 0)),
        node_id: "x".into(),
        outcome: Some(pb::result_request::Outcome::Token(3)),
    };
    let (status, message) = code(peer.send_result(result).await.unwrap_err());
    assert_eq!(status, tonic::Code::NotFound);
    assert!(
        message.contains("unknown request id nobody-waits"),
        "{message}"
    );

    // Still serving, and it counted what it refused.
    peer.send_tensor(send(good.clone(), &["origin", "sink"], 1))
        .await
        .unwrap();
    let (status, message) = code(
        peer.send_tensor(send(good, &["sink"], 0))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("first shard"), "{message}");
    assert_eq!(
        handle.check_health().await.state,
        exo::resource::ResourceState::Ready
    );
    assert!(server.ensure_ready().await.unwrap().rejected_messages() >= 6);
    server.cleanup().await.unwrap();
}
