//! The web UI in a real browser, and `/metrics` through a real Prometheus parser.
//!
//! The UI test starts a three-process ring, drives the page in the distribution's headless
//! Chromium over the DevTools protocol (tests/support/ui_browser.py): the cluster view shows
//! three nodes with their layer ranges, a chat message gets an answer that streams into
//! the page, the conversation survives a reload, and the screenshot is not blank. Then the
//! page's calculator demo tool with a forced call: the call shows as a block with its
//! function's name and pretty-printed arguments, the page runs it (the result is the one
//! computed here) and asks again; and a `json_schema` answer shows pretty-printed.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

use crate::e2e::{chat_body, three_node_ring};
use crate::harness::{NodeProcess, free_udp_port, wait_for_ring};
use crate::support::venv::{chromium, ui_python};
use crate::support::{default_model, root};

/// Runs one of the Python helpers and returns its JSON output.
fn python(script: &str, args: &[&str]) -> Value {
    let output = Command::new(ui_python())
        .arg(root().join("tests").join("support").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[test]
fn the_web_ui_chats_with_a_three_node_ring_and_shows_it_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_node_ring(dir.path());
    let browser = chromium();
    let screenshot = root().join("target").join("web-ui.png");
    let url = format!("{}/", nodes[0].url());
    let seen = python(
        "ui_browser.py",
        &[
            browser.to_str().unwrap(),
            &url,
            screenshot.to_str().unwrap(),
            "What is the capital of Germany?",
        ],
    );
    eprintln!("{seen:#}");

    // Three nodes, each with its part of the 30 layers, in ring order.
    let cluster = &seen["cluster"];
    let mut names: Vec<&str> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"], "{cluster}");
    let mut ranges: Vec<(usize, usize)> = cluster["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let (a, b) = l.as_str().unwrap().split_once("..").unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    ranges.sort();
    assert_eq!(ranges.first().unwrap().0, 0, "{cluster}");
    assert_eq!(ranges.last().unwrap().1, 30, "{cluster}");
    assert!(
        ranges
            .windows(2)
            .all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1),
        "{cluster}"
    );
    assert_eq!(cluster["ring_circles"], 3, "{cluster}");

    // The answer streamed in (several states of the text before it was done), rendered,
    // with its timings under it.
    let chat = &seen["chat"];
    assert_eq!(chat["error"], false, "{chat}");
    assert!(chat["text"].as_str().unwrap().contains("Berlin"), "{chat}");
    assert!(chat["updates"].as_u64().unwrap() >= 2, "{chat}");
    let stats = chat["stats"].as_str().unwrap();
    assert!(stats.contains("TTFT") && stats.contains("tok/s"), "{stats}");
    assert_eq!(seen["kept_messages"], 2, "{seen}");

    // Not blank: many colours, none covering nearly everything.
    let shot = &seen["screenshot"];
    assert_eq!(
        (shot["width"].as_u64(), shot["height"].as_u64()),
        (Some(1400), Some(900))
    );
    assert!(shot["colours"].as_u64().unwrap() > 200, "{shot}");
    assert!(shot["top_colour_share"].as_f64().unwrap() < 0.97, "{shot}");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);

    // Small: the first load (HTML + JS + CSS) is well under 150 KB compressed.
    let gzip: u64 = seen["first_load"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["gzip"].as_u64().unwrap())
        .sum();
    assert!(gzip <= 150 * 1024, "{gzip} bytes gzipped");

    assert_tool_calls_render(&seen["tools"]);
    assert_json_answer_renders(&seen["json_answer"]);
}

/// The forced calculator call, as the page showed it and answered it.
fn assert_tool_calls_render(tools: &Value) {
    assert_eq!(tools["errors"], serde_json::json!([]), "{tools}");
    let calls = tools["calls"].as_array().unwrap();
    assert!(!calls.is_empty(), "no tool call shown: {tools}");
    assert_eq!(calls[0]["name"], "calculator", "{tools}");
    let arguments = calls[0]["arguments"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(arguments).unwrap();
    assert!(parsed["expression"].is_string(), "{arguments}");
    // Pretty-printed, not the wire's one line.
    assert!(arguments.contains("\n  \"expression\": "), "{arguments}");
    // Every call the page ran got its result shown: the one computed independently (the
    // demo's schema admits only arithmetic, so never an error), and the model was asked
    // again with it.
    let results = tools["results"].as_array().unwrap();
    let expected = tools["expected_results"].as_array().unwrap();
    assert_eq!(results.len(), expected.len(), "{tools}");
    for (shown, wanted) in results.iter().zip(expected) {
        assert_ne!(wanted, "error", "{tools}");
        // (None: a division by zero, where JavaScript and Python differ.)
        if let Some(value) = wanted.as_str() {
            assert_eq!(shown, value, "{tools}");
        }
    }
    assert!(tools["answers"].as_u64().unwrap() >= 2, "{tools}");
    assert!(
        tools["stats"].as_str().unwrap().ends_with("tool_calls"),
        "{tools}"
    );
}

/// A strict json_schema answer, shown pretty-printed and valid for its schema.
fn assert_json_answer_renders(answer: &Value) {
    assert_eq!(answer["errors"], serde_json::json!([]), "{answer}");
    assert_eq!(answer["calls"], serde_json::json!([]), "{answer}");
    let shown = answer["json"].as_array().unwrap();
    assert_eq!(shown.len(), 1, "{answer}");
    let text = shown[0].as_str().unwrap();
    assert!(text.starts_with("{\n  \"city\": "), "{text}");
    let value: Value = serde_json::from_str(text).unwrap();
    assert!(
        ["Berlin", "Paris", "Rome"].contains(&value["city"].as_str().unwrap()),
        "{text}"
    );
}

/// Samples of one scrape: (name, labels) → value.
struct Scrape {
    families: HashMap<String, String>,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Scrape {
    fn of(node: &NodeProcess) -> Scrape {
        let parsed = python("parse_metrics.py", &[&format!("{}/metrics", node.url())]);
        assert!(
            parsed["content_type"]
                .as_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4"),
            "{}",
            parsed["content_type"]
        );
        let families = serde_json::from_value(parsed["families"].clone()).unwrap();
        let samples = parsed["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s[0].as_str().unwrap().to_string(),
                    serde_json::from_value(s[1].clone()).unwrap(),
                    s[2].as_f64().unwrap(),
                )
            })
            .collect();
        Scrape { families, samples }
    }

    /// The sum of the samples `name` whose labels include `labels`. A series that is not
    /// in the scrape fails the test: reading it as 0 would pass checks of "nothing yet"
    /// (or of a delta) on a metric that does not exist.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            !values.is_empty(),
            "no sample {name} with {labels:?} in the scrape"
        );
        values.iter().sum()
    }
}

#[test]
fn metrics_parse_with_the_prometheus_client_and_move_as_requests_run() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let nodes: Vec<NodeProcess> = ["m1", "m2"]
        .iter()
        .map(|n| NodeProcess::start(dir.path(), n, port))
        .collect();
    for node in &nodes {
        wait_for_ring(node, 2);
    }
    let before = Scrape::of(&nodes[0]);
    for (family, kind) in [
        ("exo_requests", "counter"),
        ("exo_generated_tokens", "counter"),
        ("exo_time_to_first_token_seconds", "histogram"),
        ("exo_inter_token_latency_seconds", "histogram"),
        ("exo_queue_depth", "gauge"),
        ("exo_active_requests", "gauge"),
        ("exo_kv_cache_bytes", "gauge"),
        ("exo_kv_cache_entries", "gauge"),
        ("exo_batch_panics", "counter"),
        ("exo_resource_state", "gauge"),
        ("exo_resource_errors", "counter"),
        ("exo_peer_rtt_seconds", "gauge"),
        ("exo_peer_hop_errors", "counter"),
        ("exo_peer_sent_bytes", "counter"),
        ("exo_peer_received_bytes", "counter"),
        ("exo_step_duration_seconds", "histogram"),
        ("exo_weight_bytes", "counter"),
        ("exo_event_streams", "gauge"),
        ("exo_event_streams_rejected", "counter"),
        ("exo_connections", "gauge"),
        ("exo_connections_accepted", "counter"),
        ("exo_connections_refused", "counter"),
        ("exo_connections_timed_out", "counter"),
        ("exo_tls_handshake_failures", "counter"),
        ("exo_connection_accept_errors", "counter"),
    ] {
        assert_eq!(
            before.families.get(family).map(String::as_str),
            Some(kind),
            "{family} in {:?}",
            before.families
        );
    }
    // One state per resource is 1; the peer's link has a measured round trip.
    assert_eq!(
        before.value(
            "exo_resource_state",
            &[("id", "engine"), ("state", "ready")]
        ),
        1.0
    );
    assert_eq!(
        before.value(
            "exo_resource_state",
            &[("id", "engine"), ("state", "error")]
        ),
        0.0
    );
    assert!(before.value("exo_peer_rtt_seconds", &[("peer", "m2")]) > 0.0);

    // A streamed request through the two-node ring.
    let response = ureq::post(&format!("{}/v1/chat/completions", nodes[0].url()))
        .send_json(chat_body("Count from one to ten.", 12, true))
        .unwrap()
        .into_string()
        .unwrap();
    assert!(response.contains("[DONE]"), "{response}");

    let after = Scrape::of(&nodes[0]);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(delta("exo_requests_total", &[("outcome", "finished")]), 1.0);
    assert_eq!(delta("exo_requests_started_total", &[]), 1.0);
    assert_eq!(delta("exo_generated_tokens_total", &[]), 12.0);
    assert!(delta("exo_prompt_tokens_total", &[]) > 5.0);
    assert_eq!(delta("exo_time_to_first_token_seconds_count", &[]), 1.0);
    assert!(delta("exo_inter_token_latency_seconds_count", &[]) >= 1.0);
    assert!(delta("exo_peer_sent_bytes_total", &[("peer", "m2")]) > 0.0);
    assert!(delta("exo_peer_received_bytes_total", &[("peer", "m2")]) > 0.0);
    assert!(delta("exo_steps_total", &[]) >= 12.0);
    assert!(after.value("exo_step_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(after.value("exo_active_requests", &[]), 0.0);
    // The other node ran its shard's steps and timed them.
    let other = Scrape::of(&nodes[1]);
    assert!(other.value("exo_steps_total", &[]) >= 12.0);
    assert!(other.value("exo_step_duration_seconds_count", &[]) >= 1.0);
    assert!(other.value("exo_peer_sent_bytes_total", &[("peer", "m1")]) > 0.0);
}
