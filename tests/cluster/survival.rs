//! Requests that survive losing a node (DESIGN.md §4d): three `exo node` processes on
//! loopback stream a 128-token greedy answer while one of them is killed, hung or drained
//! mid-answer; the client receives the whole answer without an error, byte for byte what
//! one process answers, and the final chunk says the request was planned again.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::e2e::{chat_body, generate_locally};
use crate::harness::{NodeProcess, free_udp_port, get_json, sse_chunks, wait_for_ring};
use crate::support::{default_model, models_dir};
use crate::weights::engine_info;

pub(crate) const STORY: &str = "Write a very long story about a dragon who learns to bake bread.";
pub(crate) const TOKENS: usize = 128;
/// Pieces of text streamed before the fault (about one token each).
const FAULT_AT: usize = 40;

/// n1 → n2 → n3, in that order (their memory limits rank them), n1 holding the first
/// half of the layers, n2 a third, n3 the rest with the output head. `limits` overrides.
fn ordered_ring(dir: &std::path::Path, limits: [&str; 3]) -> Vec<NodeProcess> {
    default_model();
    let port = free_udp_port();
    let nodes: Vec<NodeProcess> = ["n1", "n2", "n3"]
        .iter()
        .zip(limits)
        .map(|(name, limit)| {
            NodeProcess::start_with(
                dir,
                name,
                port,
                &models_dir(),
                &[("EXO_MEMORY_LIMIT", limit)],
            )
        })
        .collect();
    for node in &nodes {
        wait_for_ring(node, 3);
    }
    let topology = get_json(&format!("{}/v1/topology", nodes[0].url())).unwrap();
    let ring: Vec<&str> = topology["partition"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ring, ["n1", "n2", "n3"], "{topology}");
    nodes
}

fn default_ring(dir: &std::path::Path) -> Vec<NodeProcess> {
    ordered_ring(dir, ["3000MB", "2000MB", "1000MB"])
}

/// What a streamed answer came to.
pub(crate) struct Streamed {
    pub(crate) text: String,
    /// Every chunk, in order.
    pub(crate) chunks: Vec<serde_json::Value>,
    /// The error object, if the stream ended with one.
    pub(crate) error: Option<serde_json::Value>,
    /// When the first piece after the fault arrived, counted from the fault.
    pub(crate) resumed_after: Option<Duration>,
}

/// Streams a chat answer from `url`, calling `fault` once after `FAULT_AT` pieces.
pub(crate) fn stream_with_fault(
    url: &str,
    body: &serde_json::Value,
    fault: impl FnOnce(),
) -> Streamed {
    stream_with_fault_within(url, body, Duration::from_secs(300), fault)
}

/// [`stream_with_fault`] whose client gives up (a panic) after `patience`.
pub(crate) fn stream_with_fault_within(
    url: &str,
    body: &serde_json::Value,
    patience: Duration,
    fault: impl FnOnce(),
) -> Streamed {
    let response = ureq::post(url).timeout(patience).send_json(body).unwrap();
    let mut fault = Some(fault);
    let mut faulted_at = None;
    let mut out = Streamed {
        text: String::new(),
        chunks: Vec::new(),
        error: None,
        resumed_after: None,
    };
    let mut pieces = 0;
    let mut chunks = sse_chunks(response);
    for chunk in &mut chunks {
        if chunk.get("error").is_some() {
            out.error = Some(chunk);
            return out;
        }
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str()
            && !piece.is_empty()
        {
            out.text.push_str(piece);
            pieces += 1;
            if let Some(at) = faulted_at
                && out.resumed_after.is_none()
            {
                out.resumed_after = Some(Instant::now() - at);
            }
            if pieces == FAULT_AT
                && let Some(fault) = fault.take()
            {
                fault();
                faulted_at = Some(Instant::now());
            }
        }
        out.chunks.push(chunk);
    }
    assert!(chunks.done, "the stream ended without [DONE] or an error");
    out
}

/// The re-plans the final chunk reports.
pub(crate) fn replans(streamed: &Streamed) -> Vec<serde_json::Value> {
    let last = streamed
        .chunks
        .iter()
        .rev()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .expect("a final chunk");
    last["exo"]["replans"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Checks a stream that lost `victim` at the fault: no error, the reference answer, one
/// re-plan that left the victim out, announced in the stream.
pub(crate) fn assert_survived(
    streamed: &Streamed,
    expected: &str,
    victim: &str,
    logs: &[&NodeProcess],
) {
    let logs_of = logs;
    let logs = || {
        logs.iter()
            .map(|n| format!("--- {}:\n{}", n.name, n.log_text()))
            .collect::<String>()
    };
    assert!(
        streamed.error.is_none(),
        "the client saw an error: {:?}\n{}",
        streamed.error,
        logs()
    );
    assert_eq!(streamed.text, expected, "the answer changed\n{}", logs());
    let replans = replans(streamed);
    assert_eq!(replans.len(), 1, "{replans:?}\n{}", logs());
    assert_eq!(
        replans[0]["lost"],
        serde_json::json!([victim]),
        "{replans:?}"
    );
    assert!(
        !replans[0]["ring"].as_str().unwrap().contains(victim),
        "{replans:?}"
    );
    assert!(
        streamed
            .chunks
            .iter()
            .any(|c| c["exo"]["replan"]["epoch"] == 1),
        "the stream carries an `exo` note of the re-plan"
    );
    eprintln!(
        "lost {victim}: next token {:?} after the fault; re-plan took {} s (noticed → first token)",
        streamed.resumed_after, replans[0]["seconds"]
    );
    // What the survivors did meanwhile (seen with --nocapture).
    for node in logs_of {
        for line in node.log_text().lines().filter(|l| {
            [
                "loaded",
                "epoch",
                "planning again",
                "first token",
                "lost",
                "draining",
            ]
            .iter()
            .any(|w| l.contains(w))
        }) {
            eprintln!("  {}: {line}", node.name);
        }
    }
}

fn signal(node: &NodeProcess, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_ring_that_loses_its_middle_node_mid_answer_streams_the_whole_answer_unchanged() {
    let expected = generate_locally(STORY, TOKENS);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = default_ring(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let mut victim = nodes.remove(1);
    let streamed = stream_with_fault(&url, &chat_body(STORY, TOKENS, true), || victim.kill());
    assert_survived(&streamed, &expected, "n2", &[&nodes[0], &nodes[1]]);
}

#[test]
fn a_ring_that_loses_the_node_with_the_output_head_streams_the_whole_answer_unchanged() {
    let expected = generate_locally(STORY, TOKENS);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = default_ring(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let mut victim = nodes.remove(2);
    let streamed = stream_with_fault(&url, &chat_body(STORY, TOKENS, true), || victim.kill());
    assert_survived(&streamed, &expected, "n3", &[&nodes[0], &nodes[1]]);
}

#[test]
fn a_ring_with_a_hung_node_streams_the_whole_answer_and_the_node_drops_the_dead_epoch_when_back() {
    let expected = generate_locally(STORY, TOKENS);
    let dir = tempfile::tempdir().unwrap();
    let nodes = default_ring(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    // SIGSTOP: the process and its sockets stay, nothing answers.
    let streamed = stream_with_fault(&url, &chat_body(STORY, TOKENS, true), || {
        signal(&nodes[1], "STOP")
    });
    signal(&nodes[1], "CONT");
    assert_survived(&streamed, &expected, "n2", &[&nodes[0], &nodes[2]]);

    // n2 held the first epoch's cache when it hung, and missed the origin's word that the
    // epoch is over. Once it answers again the origin tells it, and the cache (with its
    // reservation) goes in seconds, not after the idle lifetime of minutes.
    wait_for_peer_ready(&nodes[0], "n2");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = engine_info(&nodes[1]);
        if info["active_requests"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 still holds the dead epoch's cache: {info}\n{}",
            nodes[1].log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_drained_node_costs_no_client_its_answer_and_exits_cleanly() {
    let expected = generate_locally(STORY, TOKENS);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = default_ring(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let mut drained = nodes.remove(1);
    let streamed = stream_with_fault(&url, &chat_body(STORY, TOKENS, true), || {
        signal(&drained, "TERM")
    });
    let status = drained.terminate();
    assert!(status.success(), "{status:?}\n{}", drained.log_text());
    let log = drained.log_text();
    assert!(log.contains("draining"), "{log}");
    assert!(
        log.contains("drained in"),
        "it drained before the bound:\n{log}"
    );
    assert_survived(&streamed, &expected, "n2", &[&nodes[0], &nodes[1]]);

    // The next request plans over the two left, and a request to the drained node's
    // peers is answered as before.
    wait_for_ring(&nodes[0], 2);
    let (status, answer) = crate::harness::post_json(&url, &chat_body(STORY, 16, false));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["exo"]["partition"].as_array().unwrap().len(), 2);
}

#[test]
fn the_admin_drain_endpoint_drains_and_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    default_model();
    let mut node = NodeProcess::start(dir.path(), "lonely", free_udp_port());
    wait_for_ring(&node, 1);
    // Admin POSTs are JSON (no web page can send one without a preflight).
    let response = ureq::post(&format!("{}/v1/admin/drain", node.url()))
        .set("content-type", "application/json")
        .send_string("{}")
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.into_json().unwrap();
    assert_eq!(body["drain"]["draining"], true, "{body}");
    // It stops by itself, with exit code 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{}", node.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", node.log_text());
}

#[test]
fn when_the_nodes_left_cannot_hold_the_model_the_request_ends_with_a_clear_error() {
    // Each node holds a third of the model (~6.4 MB a layer, 30 layers): two cannot.
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = ordered_ring(dir.path(), ["70MB", "70MB", "70MB"]);
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let mut victim = nodes.remove(1);
    let streamed = stream_with_fault(&url, &chat_body(STORY, TOKENS, true), || victim.kill());
    let error = streamed.error.expect("the request cannot go on");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("n2"), "names the lost node: {message}");
    assert!(
        message.contains("too small for model smollm2-135m"),
        "says what is missing: {message}"
    );
}

/// Waits until `node` sees `peer` with a Ready link.
fn wait_for_peer_ready(node: &NodeProcess, peer: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(topology) = get_json(&format!("{}/v1/topology", node.url()))
            && topology["nodes"].as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["node_id"] == peer && n["link_state"] == "ready")
            })
        {
            return topology;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not see {peer}",
            node.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_that_rejoins_is_planned_again_but_one_lost_twice_in_a_minute_is_left_out() {
    let expected = generate_locally(STORY, TOKENS);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = default_ring(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let restart = |nodes: &mut Vec<NodeProcess>| {
        nodes[1] = NodeProcess::start_with(
            dir.path(),
            "n2",
            nodes[0].discovery_port,
            &models_dir(),
            &[("EXO_MEMORY_LIMIT", "2000MB")],
        );
    };

    // Lost once: back in the next plans as soon as it rejoins.
    let streamed = stream_with_fault(&url, &chat_body(STORY, TOKENS, true), || nodes[1].kill());
    assert_survived(&streamed, &expected, "n2", &[&nodes[0], &nodes[2]]);
    restart(&mut nodes);
    wait_for_ring(&nodes[0], 3);
    let (status, answer) = crate::harness::post_json(&url, &chat_body(STORY, 8, false));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["exo"]["partition"].as_array().unwrap().len(),
        3,
        "{answer}"
    );

    // Lost again within the minute: flapping, left out of new plans while Ready.
    let streamed = stream_with_fault(&url, &chat_body(STORY, TOKENS, true), || nodes[1].kill());
    assert_survived(&streamed, &expected, "n2", &[&nodes[0], &nodes[2]]);
    restart(&mut nodes);
    let topology = wait_for_peer_ready(&nodes[0], "n2");
    let flapping = topology["flapping"].as_array().unwrap();
    assert_eq!(flapping.len(), 1, "{topology}");
    assert_eq!(flapping[0]["node_id"], "n2");
    assert_eq!(flapping[0]["losses_last_minute"], 2);
    let (status, answer) = crate::harness::post_json(&url, &chat_body(STORY, 8, false));
    assert_eq!(status, 200, "{answer}");
    let ring = answer["exo"]["ring"].as_str().unwrap();
    assert!(!ring.contains("n2"), "a flapping node is left out: {ring}");
}

#[test]
fn re_plans_are_bounded_by_max_replans() {
    // With --max-replans 0 a lost node ends the request, with an error that names it.
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let mut nodes: Vec<NodeProcess> = [("n1", "3000MB"), ("n2", "2000MB"), ("n3", "1000MB")]
        .iter()
        .map(|(name, limit)| {
            NodeProcess::start_with(
                dir.path(),
                name,
                port,
                &models_dir(),
                &[("EXO_MEMORY_LIMIT", limit), ("EXO_MAX_REPLANS", "0")],
            )
        })
        .collect();
    for node in &nodes {
        wait_for_ring(node, 3);
    }
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let mut victim = nodes.remove(2);
    let streamed = stream_with_fault(&url, &chat_body(STORY, TOKENS, true), || victim.kill());
    let error = streamed.error.expect("no re-plan is allowed");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("n3"), "{message}");
    assert!(message.contains("planned again 0 time(s)"), "{message}");
}

#[test]
fn a_seeded_sampled_answer_survives_a_lost_node_unchanged() {
    // Sampling is stateless per step (seed and token index), so a re-planned request draws
    // the same tokens as an uninterrupted one.
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = default_ring(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let mut body = chat_body(STORY, TOKENS, false);
    body["temperature"] = serde_json::json!(0.9);
    body["seed"] = serde_json::json!(1234);
    let (status, whole) = crate::harness::post_json(&url, &body);
    assert_eq!(status, 200, "{whole}");
    let expected = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        expected,
        generate_locally(STORY, TOKENS),
        "the draw differs from greedy"
    );
    body["stream"] = serde_json::json!(true);
    let mut victim = nodes.remove(1);
    let streamed = stream_with_fault(&url, &body, || victim.kill());
    assert_survived(&streamed, &expected, "n2", &[&nodes[0], &nodes[1]]);
}
