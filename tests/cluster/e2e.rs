//! End to end: three `exo node` processes on loopback serve chat requests through their
//! HTTP APIs exactly as one `exo generate` does (a node lost mid-request: `survival`).

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{NodeProcess, free_udp_port, get_json, post_json, sse_chunks, wait_for_ring};
use crate::support::{assert_success, default_model, exo_bin, models_dir};

/// A question the default model answers with a clear margin at every token (its France
/// answer hangs on a near-tie between "The" and "L'", which 8- and 16-bit arithmetic break
/// differently; llama.cpp's 8 bits say "L'Étoile…").
pub const PROMPT: &str = "What is the capital of Germany?";

/// The single-process answer the ring must reproduce.
pub fn generate_locally(prompt: &str, max_tokens: usize) -> String {
    default_model();
    generate_locally_with("smollm2-135m", prompt, max_tokens)
}

/// What one process answers with `model` (greedy), as [`generate_locally`].
pub fn generate_locally_with(model: &str, prompt: &str, max_tokens: usize) -> String {
    let output = Command::new(exo_bin())
        .args(["generate", "--model", model, "--device", "cpu"])
        .args(["--temperature", "0", "--prompt", prompt])
        .args(["--max-tokens", &max_tokens.to_string()])
        .env("EXO_MODELS_DIR", models_dir())
        .output()
        .unwrap();
    assert_success(&output);
    let text = String::from_utf8(output.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

/// Asks `node` the prompt (32 tokens, not streamed) and checks that it answers `expected`;
/// the answer's body.
pub fn ask(node: &NodeProcess, expected: &str) -> serde_json::Value {
    let url = format!("{}/v1/chat/completions", node.url());
    let (status, body) = post_json(&url, &chat_body(PROMPT, 32, false));
    assert_eq!(status, 200, "{body}\n{}", node.log_text());
    assert_eq!(
        body["choices"][0]["message"]["content"], expected,
        "through {}",
        node.name
    );
    body
}

pub fn chat_body(prompt: &str, max_tokens: usize, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// Three nodes that see each other.
pub fn three_node_ring(dir: &std::path::Path) -> Vec<NodeProcess> {
    default_model();
    let port = free_udp_port();
    let nodes: Vec<NodeProcess> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| NodeProcess::start(dir, n, port))
        .collect();
    for node in &nodes {
        wait_for_ring(node, 3);
    }
    nodes
}

/// Reads an SSE response: the content pieces, and the final chunk or error object.
fn stream(
    url: &str,
    body: &serde_json::Value,
    mut on_piece: impl FnMut(&str),
) -> Result<(String, serde_json::Value), serde_json::Value> {
    let response = ureq::post(url)
        .timeout(Duration::from_secs(120))
        .send_json(body)
        .unwrap();
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let mut text = String::new();
    let mut last = serde_json::Value::Null;
    let mut chunks = sse_chunks(response);
    for chunk in &mut chunks {
        if chunk.get("error").is_some() {
            return Err(chunk);
        }
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
            on_piece(piece);
        }
        if !chunk["choices"][0]["finish_reason"].is_null() {
            last = chunk;
        }
    }
    assert!(chunks.done, "the stream ended without [DONE] or an error");
    Ok((text, last))
}

#[test]
fn a_three_process_ring_answers_exactly_as_one_process_streaming_or_not_and_concurrently() {
    let expected = generate_locally(PROMPT, 32);
    assert!(expected.contains("Berlin"), "{expected}");
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_node_ring(dir.path());

    for node in &nodes {
        let url = format!("{}/v1/chat/completions", node.url());
        let body = ask(node, &expected);
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        let usage = &body["usage"];
        assert_eq!(
            usage["total_tokens"],
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
        assert_eq!(
            body["exo"]["partition"].as_array().unwrap().len(),
            3,
            "{body}"
        );

        let (text, last) = stream(&url, &chat_body(PROMPT, 32, true), |_| {}).unwrap();
        assert_eq!(text, expected, "streamed through {}", node.name);
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
    }

    // Two requests at once, through different nodes, both right.
    let second_prompt = "Name three colors.";
    let second_expected = generate_locally(second_prompt, 24);
    let (a, b) = (nodes[0].url(), nodes[2].url());
    let first = std::thread::spawn(move || {
        post_json(
            &format!("{a}/v1/chat/completions"),
            &chat_body(PROMPT, 32, false),
        )
    });
    let second = std::thread::spawn(move || {
        post_json(
            &format!("{b}/v1/chat/completions"),
            &chat_body(second_prompt, 24, false),
        )
    });
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    assert_eq!(
        first.1["choices"][0]["message"]["content"],
        expected.as_str()
    );
    assert_eq!(
        second.1["choices"][0]["message"]["content"],
        second_expected.as_str()
    );

    // Every cache was dropped when its request finished (the nodes are told right after
    // the client has its answer).
    wait_for_no_caches(&nodes);

    // A client that goes away mid-stream cancels its request: every cache is dropped.
    let url = format!("{}/v1/chat/completions", nodes[1].url());
    let response = ureq::post(&url)
        .timeout(Duration::from_secs(120))
        .send_json(chat_body(
            "Write a very long story about a lighthouse.",
            2000,
            true,
        ))
        .unwrap();
    let mut lines = BufReader::new(response.into_reader()).lines();
    let mut chunks = 0;
    while chunks < 5 {
        if lines.next().unwrap().unwrap().starts_with("data: ") {
            chunks += 1;
        }
    }
    assert!(
        nodes.iter().any(|n| active_requests(n) > 0),
        "the request holds caches while it runs"
    );
    drop(lines);
    wait_for_no_caches(&nodes);
}

/// Waits (checking each node's engine, with a deadline) until no node holds a cache.
fn wait_for_no_caches(nodes: &[NodeProcess]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in nodes {
        while active_requests(node) != 0 {
            assert!(
                Instant::now() < deadline,
                "{} kept a finished request's cache",
                node.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Requests holding a KV cache on a node (its engine's resource info).
fn active_requests(node: &NodeProcess) -> u64 {
    let resources = get_json(&format!("{}/v1/resources", node.url())).unwrap();
    let engine = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "engine")
        .unwrap();
    engine["info"]["active_requests"].as_u64().unwrap()
}

#[test]
fn sigterm_stops_a_node_cleanly_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    default_model();
    let mut node = NodeProcess::start(dir.path(), "lonely", free_udp_port());
    wait_for_ring(&node, 1);
    let status = node.terminate();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        node.log_text()
    );
    let log = node.log_text();
    assert!(log.contains("shutting down"), "{log}");
}
