//! gRPC message caps per kind, over a real server: control messages (health, status,
//! finish, weight requests) have a small cap, batches of steps and results a larger one;
//! an oversize message of each kind is refused (a control message with RESOURCE_EXHAUSTED
//! naming its flag, counted; a batch by tonic's own cap, the largest) while normal traffic
//! of each kind passes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU16;

use exo::proto::pb;
use exo::proto::pb::node_client::NodeClient;
use exo::resource::{Managed, Resource};
use exo::server::{GrpcServer, MessageLimits};
use tonic::{Code, Status};

use super::tensors::context;
use crate::support::stand_in::StandIn;

const CONTROL: usize = 4 << 10;
const BATCH: usize = 256 << 10;

fn hidden(rows: usize, cols: usize) -> pb::Tensor {
    exo::proto::encode_hidden(&exo::engine::HiddenState {
        data: vec![0.5; rows * cols],
        rows,
        cols,
    })
}

fn steps(rows: usize) -> pb::StepBatch {
    pb::StepBatch {
        items: vec![pb::StepItem {
            context: Some(context("r1", &["origin", "sink"], 1)),
            input: Some(pb::step_item::Input::Tensor(hidden(rows, 576))),
        }],
    }
}

fn refused_for_size(status: &Status, kind: &str, flag: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(kind), "{}", status.message());
    assert!(status.message().contains(flag), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_of_each_kind_are_refused_and_normal_traffic_passes() {
    let limits = MessageLimits {
        control_bytes: CONTROL,
        batch_bytes: BATCH,
    };
    let server = Managed::new(
        "grpc_server",
        GrpcServer::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::new(StandIn::new("sink")),
            Arc::new(AtomicU16::new(0)),
        )
        .with_limits(limits),
    );
    let address = server.ensure_ready().await.unwrap().local_addr().unwrap();
    let mut client = NodeClient::connect(format!("http://{address}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);

    // Control: a health check and a small finish pass; a finish or status message over
    // the control cap is refused (though far under the batch cap).
    let health = client
        .health_check(pb::HealthCheckRequest {})
        .await
        .unwrap();
    assert_eq!(health.into_inner().node_id, "sink");
    client
        .finish_request(pb::FinishRequestMessage {
            request_id: "r1".into(),
            reason: "done".into(),
            keep_blocks: Vec::new(),
        })
        .await
        .unwrap();
    let big_finish = client
        .finish_request(pb::FinishRequestMessage {
            request_id: "r".repeat(CONTROL + 1),
            reason: String::new(),
            keep_blocks: Vec::new(),
        })
        .await
        .unwrap_err();
    refused_for_size(&big_finish, "control", "--grpc-max-control-bytes");
    let big_status = client
        .send_status(pb::StatusMessage {
            payload: "x".repeat(CONTROL * 2),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused_for_size(&big_status, "control", "--grpc-max-control-bytes");

    // Batches: a decode step's hidden state (1 × 576 f32, 2.3 KB) is over the control cap
    // yet passes as a batch; 200 rows (460 KB) are over the batch cap.
    let ack = client.send_steps(steps(1)).await.unwrap().into_inner();
    assert_eq!(ack.errors, vec![String::new()]);
    let ack = client.send_steps(steps(100)).await.unwrap().into_inner();
    assert_eq!(
        ack.errors,
        vec![String::new()],
        "100 rows are 230 KB, under the cap"
    );
    // The batch cap is the largest, so it is tonic's own cap: refused before the message is
    // buffered, with tonic's OUT_OF_RANGE naming the size and the limit.
    let too_large = |status: Status| {
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains("too large"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains(&BATCH.to_string()),
            "{}",
            status.message()
        );
    };
    too_large(client.send_steps(steps(200)).await.unwrap_err());
    too_large(
        client
            .send_results(pb::ResultBatch {
                items: (0..BATCH / 64)
                    .map(|i| pb::ResultItem {
                        context: Some(context(&format!("r{i}"), &["sink", "b"], 1)),
                        outcome: Some(pb::result_item::Outcome::Token(1)),
                        node_id: "b".into(),
                        logprobs: None,
                    })
                    .collect(),
            })
            .await
            .unwrap_err(),
    );

    // The node still serves, and its report shows the caps and what they refused.
    client
        .health_check(pb::HealthCheckRequest {})
        .await
        .unwrap();
    let info = server.ensure_ready().await.unwrap().info();
    assert_eq!(info["max_message_bytes"]["control_bytes"], CONTROL);
    assert_eq!(info["max_message_bytes"]["batch_bytes"], BATCH);
    assert_eq!(info["oversize_messages"], 2, "{info}");
    server.cleanup().await.unwrap();
}
