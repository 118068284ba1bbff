//! Faults on demand (`crate::faults`, issue 21 items 10, 11 and 15): in-process nodes on
//! loopback, broken mid-answer through `POST /v1/admin/faults`. Each fault ends in a
//! continuation (the whole answer, unchanged) or in an error of its own kind, well within
//! the client's patience here (60 s, against the 300 s cap the flow used to wait out).

use std::sync::Arc;
use std::time::{Duration, Instant};

use exo::app::{DiscoveryMode, Node};
use exo::faults::Faults;
use exo::resource::ResourceState;

use crate::e2e::chat_body;
use crate::harness::{WAIT, free_udp_port, get_json, loopback_config, post_json, wait_for_peers};
use crate::survival::{STORY, TOKENS, replans, stream_with_fault_within};

/// Far less than the cap a lost result or a hung engine used to cost.
const PATIENCE: Duration = Duration::from_secs(60);

/// The client's patience for two long answers at once on a loaded machine: still half
/// the cap a lost result used to cost (the re-plan's reason says how it was found).
const LONG_PATIENCE: Duration = Duration::from_secs(150);

/// A node that can be broken on demand, with a memory limit that ranks it in plans.
async fn breakable(dir: &std::path::Path, name: &str, port: u16, memory: u64) -> Node {
    let mut config = loopback_config(dir, name, port);
    config.memory_limit = Some(memory);
    config.faults = Some(Arc::new(Faults::default()));
    Node::start(config).await.unwrap()
}

/// n1 (the origin, first in the ring) and n2 (the rest, with the output head; able to hold
/// the whole model alone), once n1 plans over both.
async fn two_node_ring(dir: &std::path::Path) -> (Node, Node) {
    let port = free_udp_port();
    let n1 = breakable(dir, "n1", port, 3_000_000_000).await;
    let n2 = breakable(dir, "n2", port, 1_000_000_000).await;
    wait_for_peers(&n1, 1).await;
    wait_for_peers(&n2, 1).await;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(plan) = n1.flow.plan().await
            && plan.entries.len() == 2
        {
            assert_eq!(plan.entries[0].node_id, "n1");
            break;
        }
        assert!(Instant::now() < deadline, "n1 never planned over n2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (n1, n2)
}

fn set_faults(node: &Node, settings: serde_json::Value) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}/v1/admin/faults", node.api_port());
    let (status, body) = post_json(&url, &settings);
    assert_eq!(status, 200, "{body}");
    body["faults"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_lost_on_their_way_back_start_a_new_epoch_over_the_same_ring() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = two_node_ring(dir.path()).await;
    let n2 = Arc::new(n2);
    let shard = n2.clone();
    // The next result n2 sends back to n1 is lost; steps from n1 to n2 still flow, and
    // every node answers its health checks.
    let (expected, streamed) = stream_with(n1.api_port(), move || {
        set_faults(&shard, serde_json::json!({"drop_results": 1}));
    })
    .await;
    let replan = the_one_replan(&expected, &streamed);
    let reason = replan["reason"].as_str().unwrap();
    assert!(reason.contains("deadlines passed"), "{reason}");
    assert_eq!(replan["lost"], serde_json::json!([]), "{replan}");
    assert_eq!(n2.flow.faults().unwrap().report().results_dropped, 1);
}

/// On a busy ring (two answers at once, so a late result may only be queued behind the
/// other's steps) missed deadlines alone prove nothing; the origin asks the nodes how far
/// they got: n2 says it sent the result back, so the request goes on in a new epoch then,
/// not once the other answer is over (nor after the cap, before the nodes were asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_lost_on_a_busy_ring_is_found_by_asking_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = two_node_ring(dir.path()).await;
    let n2 = Arc::new(n2);
    let (port, shard) = (n1.api_port(), n2.clone());
    let (expected, streams) = tokio::task::spawn_blocking(move || {
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        // Long answers, so that the other keeps the ring busy while one waits.
        let mut body = chat_body(STORY, 2 * TOKENS, false);
        body["ignore_eos"] = true.into();
        let (status, whole) = post_json(&url, &body);
        assert_eq!(status, 200, "{whole}");
        let expected = whole["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        body["stream"] = true.into();
        let (first_under_way, wait_for_first) = std::sync::mpsc::channel();
        let other = {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                stream_with_fault_within(&url, &body, LONG_PATIENCE, move || {
                    first_under_way.send(()).unwrap()
                })
            })
        };
        wait_for_first.recv().unwrap();
        // With both under way, the next result n2 sends back to n1 is lost.
        let this = stream_with_fault_within(&url, &body, LONG_PATIENCE, move || {
            set_faults(&shard, serde_json::json!({"drop_results": 1}));
        });
        (expected, [this, other.join().unwrap()])
    })
    .await
    .unwrap();
    let mut all_replans = Vec::new();
    for streamed in &streams {
        assert!(streamed.error.is_none(), "{:?}", streamed.error);
        assert_eq!(streamed.text, expected);
        all_replans.extend(replans(streamed));
    }
    assert_eq!(all_replans.len(), 1, "{all_replans:?}");
    let reason = all_replans[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("node n2 sent the result of step"),
        "found by the nodes' progress, not by an idle ring: {reason}"
    );
    assert_eq!(all_replans[0]["lost"], serde_json::json!([]));
    assert_eq!(n2.flow.faults().unwrap().report().results_dropped, 1);
}

/// A shard's engine hangs, then comes back without the steps it held (a device reset):
/// every node answers throughout, so only the failed steps can tell the origin. They fail
/// when the engine is mended, and the request goes on in a new epoch (it used to wait
/// out the cap: scripts/chaos.sh's `engine` fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steps_a_reset_engine_lost_fail_and_the_request_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = two_node_ring(dir.path()).await;
    let n2 = Arc::new(n2);
    let shard = n2.clone();
    let (expected, streamed) = stream_with(n1.api_port(), move || {
        set_faults(&shard, serde_json::json!({"fail_engine": true}));
        let deadline = Instant::now() + WAIT;
        while shard.flow.faults().unwrap().report().steps_held == 0 {
            assert!(Instant::now() < deadline, "n2's engine never held a step");
            std::thread::yield_now();
        }
        set_faults(&shard, serde_json::json!({"fail_engine": false}));
    })
    .await;
    let replan = the_one_replan(&expected, &streamed);
    let reason = replan["reason"].as_str().unwrap();
    assert!(reason.contains("engine was reset"), "{reason}");
}

/// The origin's own engine hangs (and, three failed health checks later, is in Error):
/// only n1 can tell, at a missed deadline. The request goes on over n2 alone; n2's results
/// still reach n1, whose engine says "not serving" (n2's handle on n1 records that and
/// stays usable, instead of refusing n1), and n1 keeps only the API's part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_whose_own_engine_hangs_goes_on_without_its_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, _n2) = two_node_ring(dir.path()).await;
    let n1 = Arc::new(n1);
    let origin = n1.clone();
    // n1's engine stops finishing steps and fails its health check; only n1 can tell.
    let (expected, streamed) = stream_with(n1.api_port(), move || {
        set_faults(&origin, serde_json::json!({"fail_engine": true}));
    })
    .await;
    let replan = the_one_replan(&expected, &streamed);
    assert_eq!(replan["lost"], serde_json::json!(["n1"]), "{replan}");
    assert_eq!(replan["ring"], "n2[0,30)", "{replan}");
    // The fault struck n1's engine one of two ways: it held a step (a hang), or, on a
    // loaded machine, its failing health check was seen before any step reached it (the
    // engine is then out of service). Either way the request went on without n1's layers.
    let held = n1.flow.faults().unwrap().report().steps_held;
    let state = n1.engine.state();
    assert!(
        held > 0 || state != ResourceState::Ready,
        "the fault did not reach n1's engine: no step held, engine {state:?}"
    );
}

/// Checks that the stream went on: no error, the unbroken answer, one re-plan (returned).
fn the_one_replan(expected: &str, streamed: &crate::survival::Streamed) -> serde_json::Value {
    assert!(streamed.error.is_none(), "{:?}", streamed.error);
    assert_eq!(streamed.text, expected);
    let replans = replans(streamed);
    assert_eq!(replans.len(), 1, "{replans:?}");
    replans[0].clone()
}

/// The unbroken ring's answer at `origin`, then the same request streamed with `fault`
/// struck mid-answer.
async fn stream_with(
    origin: u16,
    fault: impl FnOnce() + Send + 'static,
) -> (String, crate::survival::Streamed) {
    tokio::task::spawn_blocking(move || {
        let expected = reference_at(origin);
        let url = format!("http://127.0.0.1:{origin}/v1/chat/completions");
        let body = chat_body(STORY, TOKENS, true);
        (
            expected,
            stream_with_fault_within(&url, &body, PATIENCE, fault),
        )
    })
    .await
    .unwrap()
}

/// The answer of the unbroken ring, to compare with.
fn reference_at(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let (status, body) = post_json(&url, &chat_body(STORY, TOKENS, false));
    assert_eq!(status, 200, "{body}");
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A lone node that is draining, or too small for the model, and the error each kind
/// of failure gets on every generation route.
async fn lone(dir: &std::path::Path, memory: Option<u64>) -> Node {
    let mut config = loopback_config(dir, "solo", 0);
    config.discovery = DiscoveryMode::None;
    config.memory_limit = memory;
    Node::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_their_kind_to_the_client_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let small = lone(&dir.path().join("small"), Some(20_000_000)).await;
    let draining = lone(&dir.path().join("draining"), None).await;
    draining.flow.start_draining();
    let (small_port, draining_port) = (small.api_port(), draining.api_port());
    tokio::task::spawn_blocking(move || {
        let chat = |port: u16| {
            post_json(
                &format!("http://127.0.0.1:{port}/v1/chat/completions"),
                &chat_body("Hi", 4, false),
            )
        };
        // A cluster too small for the model: 503, and the code says why.
        let (status, body) = chat(small_port);
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "cluster_too_small", "{body}");
        assert_eq!(body["error"]["type"], "server_error", "{body}");
        // A draining node: 409 (ask another node), on OpenAI's, Anthropic's and Ollama's
        // routes, each in its own shape.
        let (status, body) = chat(draining_port);
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "node_draining", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("draining")
        );
        let (status, body) = post_json(
            &format!("http://127.0.0.1:{draining_port}/v1/messages"),
            &serde_json::json!({"model": "smollm2-135m", "max_tokens": 4,
                "messages": [{"role": "user", "content": "Hi"}]}),
        );
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], "overloaded_error", "{body}");
        let (status, body) = post_json(
            &format!("http://127.0.0.1:{draining_port}/api/chat"),
            &serde_json::json!({"model": "smollm2-135m", "stream": false,
                "messages": [{"role": "user", "content": "Hi"}]}),
        );
        assert_eq!(status, 409, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("draining"),
            "{body}"
        );
        // Fault injection is off on a node started without it: the endpoint is not there.
        let faults = format!("http://127.0.0.1:{small_port}/v1/admin/faults");
        let (status, body) = post_json(&faults, &serde_json::json!({"fail_engine": true}));
        assert_eq!(status, 404, "{body}");
        assert!(get_json(&faults).unwrap_err().starts_with("404"));
    })
    .await
    .unwrap();
}
