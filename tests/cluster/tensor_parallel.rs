//! Nodes form tensor-parallel groups (DESIGN.md §3b): two `exo node` processes on
//! loopback started with `--parallelism tensor` plan one pair that shares every layer,
//! open their group links, and answer a request through the API exactly as one process
//! does — and the request really ran as a group (the plan names the pair; both nodes
//! count the batches and all-reduces they ran together).

use std::time::Instant;

use crate::e2e::{PROMPT, chat_body, generate_locally, generate_locally_with};
use crate::harness::{NodeProcess, WAIT, free_udp_port, get_json, post_json};
use crate::support::{default_model, qwen_model};
use crate::survival::{TOKENS, assert_survived, stream_with_fault};

/// A pair of nodes with `--parallelism tensor` and the same memory (so that the plan's
/// order, by memory then node id, makes `ta` the leader).
fn tensor_pair(dir: &std::path::Path) -> Vec<NodeProcess> {
    default_model();
    tensor_pair_of(dir, "smollm2-135m")
}

/// [`tensor_pair`] serving `model`.
fn tensor_pair_of(dir: &std::path::Path, model: &str) -> Vec<NodeProcess> {
    let port = free_udp_port();
    let args = ["--parallelism", "tensor", "--memory-limit", "4GB"];
    let nodes: Vec<NodeProcess> = ["ta", "tb"]
        .iter()
        .map(|n| NodeProcess::start_model_args(dir, n, port, model, &args))
        .collect();
    for node in &nodes {
        wait_for_pair(node);
    }
    nodes
}

/// Waits until `node` plans the pair as one group (its peer joined, links announced).
fn wait_for_pair(node: &NodeProcess) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(topology) = get_json(&format!("{}/v1/topology", node.url())) {
            let entries = &topology["partition"]["entries"];
            if entries.as_array().is_some_and(|e| e.len() == 1)
                && entries[0]["followers"]
                    .as_array()
                    .is_some_and(|f| f.len() == 1)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not plan a tensor-parallel pair:\n{}",
            node.name,
            node.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The counter `name` in `node`'s /metrics (0 when absent).
fn counter(node: &NodeProcess, name: &str) -> f64 {
    let text = ureq::get(&format!("{}/metrics", node.url()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_tensor_parallel_pair_of_processes_answers_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let expected = generate_locally(PROMPT, 24);
    let nodes = tensor_pair(dir.path());
    let (leader, follower) = (&nodes[0], &nodes[1]);
    let topology = get_json(&format!("{}/v1/topology", follower.url())).unwrap();
    let entry = &topology["partition"]["entries"][0];
    assert_eq!(entry["node_id"], "ta", "{topology}");
    assert_eq!(entry["followers"][0]["node_id"], "tb", "{topology}");
    assert_eq!(
        (entry["start_layer"].as_u64(), entry["end_layer"].as_u64()),
        (Some(0), Some(30))
    );

    // Through the follower's API: its plan sends the steps to the leader.
    let url = format!("{}/v1/chat/completions", follower.url());
    let (status, body) = post_json(&url, &chat_body(PROMPT, 24, false));
    assert_eq!(status, 200, "{body}\n{}", leader.log_text());
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());
    // One group batch per step: the prompt's, then one per token after the first.
    let steps = body["usage"]["completion_tokens"].as_f64().unwrap();

    for (node, role) in [
        (leader, "exo_group_batches_led_total"),
        (follower, "exo_group_batches_followed_total"),
    ] {
        assert!(
            counter(node, role) >= steps,
            "{} ran no group batches as {role}:\n{}",
            node.name,
            node.log_text()
        );
        // Two per layer and batch, one for the embedding.
        let all_reduces = counter(node, "exo_group_all_reduces_total");
        assert!(all_reduces >= steps * 61.0, "{}: {all_reduces}", node.name);
    }

    // A request may ask for a pipeline instead (benchmarks compare the two).
    let mut body = chat_body(PROMPT, 24, false);
    body["parallelism"] = "pipeline".into();
    let led = counter(leader, "exo_group_batches_led_total");
    let (status, answer) = post_json(&url, &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        expected.as_str()
    );
    assert_eq!(counter(leader, "exo_group_batches_led_total"), led);

    body["parallelism"] = "both".into();
    let (status, refused) = post_json(&url, &body);
    assert_eq!(status, 400, "{refused}");
}

/// The real Qwen2.5-Coder-0.5B, whose pair answers this prompt as one process does for
/// all of [`TOKENS`] (SmolLM2-135M's answers have near-ties that the pair's summation
/// order breaks differently within a few dozen tokens; see DESIGN.md §3b).
const QWEN: &str = "qwen2.5-coder-0.5b";
const CODE_PROMPT: &str = "Write a Python function that parses a CSV file and explain it.";

fn qwen_stream_body() -> serde_json::Value {
    let mut body = chat_body(CODE_PROMPT, TOKENS, true);
    body["model"] = QWEN.into();
    body
}

/// Losing a group member re-plans like losing a stage (DESIGN.md §4d): the follower
/// killed mid-answer breaks the leader's group link, the leader's step fails, the origin
/// (the leader) finds the follower gone and plans again over itself alone; the client
/// receives the whole answer, byte for byte one process's.
#[test]
fn a_tensor_parallel_pair_that_loses_its_follower_mid_answer_streams_the_whole_answer_unchanged() {
    qwen_model();
    let expected = generate_locally_with(QWEN, CODE_PROMPT, TOKENS);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = tensor_pair_of(dir.path(), QWEN);
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let mut follower = nodes.remove(1);
    let streamed = stream_with_fault(&url, &qwen_stream_body(), || follower.kill());
    assert_survived(&streamed, &expected, "tb", &[&nodes[0]]);
    assert!(
        counter(&nodes[0], "exo_group_batches_led_total") >= 40.0,
        "the request ran as a group until the fault:\n{}",
        nodes[0].log_text()
    );
}

/// The leader killed mid-answer: the origin (the follower) loses the hop to it and plans
/// again over itself alone, with the same answer.
#[test]
fn a_tensor_parallel_pair_that_loses_its_leader_mid_answer_streams_the_whole_answer_unchanged() {
    qwen_model();
    let expected = generate_locally_with(QWEN, CODE_PROMPT, TOKENS);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = tensor_pair_of(dir.path(), QWEN);
    let url = format!("{}/v1/chat/completions", nodes[1].url());
    let mut leader = nodes.remove(0);
    let streamed = stream_with_fault(&url, &qwen_stream_body(), || leader.kill());
    assert_survived(&streamed, &expected, "ta", &[&nodes[0]]);
    assert!(
        counter(&nodes[0], "exo_group_batches_followed_total") >= 40.0,
        "the request ran as a group until the fault:\n{}",
        nodes[0].log_text()
    );
}
