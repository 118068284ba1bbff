//! The prefix cache across processes: a conversation's next turn reuses what every shard
//! of its ring kept of the last one, and its greedy answer is the one a node without a
//! prefix cache gives — on one node and through a ring, and under a budget so small that
//! blocks are evicted (a miss costs a full prefill, never a wrong answer).

use std::time::Duration;

use crate::harness::{NodeProcess, free_udp_port, post_json, wait_for_ring};
use crate::support::default_model;

const SYSTEM: &str = "You are a careful assistant for a travel agency. Answer in one short \
    sentence, name the country first, and never invent facts you are not sure about. Keep \
    answers friendly and plain, with no lists and no markdown.";

/// A value of a node's `/metrics`, summed over its label sets.
pub fn metric(node: &NodeProcess, name: &str) -> f64 {
    let text = ureq::get(&format!("{}/metrics", node.url()))
        .timeout(Duration::from_secs(10))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asks `node` the conversation `messages` greedily; the answer's text.
fn answer(node: &NodeProcess, messages: &serde_json::Value) -> String {
    let body = serde_json::json!({
        "model": "smollm2-135m",
        "messages": messages,
        "max_tokens": 24,
        "temperature": 0,
    });
    let (status, body) = post_json(&format!("{}/v1/chat/completions", node.url()), &body);
    assert_eq!(status, 200, "{body}\n{}", node.log_text());
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A conversation's first messages about `city`: with the shared system prompt, or with
/// the city in its first tokens (so that no two conversations share a block).
fn opening(city: &str, system: bool) -> serde_json::Value {
    if system {
        serde_json::json!([
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": format!("Which country is {city} in?")},
        ])
    } else {
        serde_json::json!([
            {"role": "user", "content": format!("{city}: which country is it in? {SYSTEM}")},
        ])
    }
}

/// Two turns of a conversation that opens with `messages`; the answers.
fn conversation(
    node: &NodeProcess,
    mut messages: serde_json::Value,
    next: &str,
) -> (String, String) {
    let first = answer(node, &messages);
    let list = messages.as_array_mut().unwrap();
    list.push(serde_json::json!({"role": "assistant", "content": first}));
    list.push(serde_json::json!({"role": "user", "content": format!("And {next}?")}));
    (first, answer(node, &messages))
}

/// The reference: a node that keeps no prefixes.
fn without_prefix_cache(dir: &std::path::Path) -> NodeProcess {
    NodeProcess::start_args(
        dir,
        "plain",
        free_udp_port(),
        &["--prefix-cache-bytes", "0"],
    )
}

#[test]
fn the_next_turn_reuses_the_ring_s_prefix_cache_and_answers_the_same() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let plain = without_prefix_cache(dir.path());
    wait_for_ring(&plain, 1);
    let expected = conversation(&plain, opening("Lyon", true), "Porto");
    assert_eq!(metric(&plain, "exo_prefix_cache_hits_total"), 0.0);

    // One node with a prefix cache: the second turn starts from the first's blocks.
    let solo = NodeProcess::start(dir.path(), "solo", free_udp_port());
    wait_for_ring(&solo, 1);
    assert_eq!(
        conversation(&solo, opening("Lyon", true), "Porto"),
        expected
    );
    assert_eq!(metric(&solo, "exo_prefix_cache_hits_total"), 1.0);
    assert!(metric(&solo, "exo_prefix_cache_reused_tokens_total") >= 48.0);
    assert!(metric(&solo, "exo_prefix_cache_blocks") > 0.0);
    drop(solo);

    // A ring of three: every shard restores its layers' part of the prefix.
    let port = free_udp_port();
    let ring: Vec<NodeProcess> = ["p1", "p2", "p3"]
        .iter()
        .map(|name| NodeProcess::start(dir.path(), name, port))
        .collect();
    for node in &ring {
        wait_for_ring(node, 3);
    }
    assert_eq!(
        conversation(&ring[0], opening("Lyon", true), "Porto"),
        expected
    );
    for node in &ring {
        assert_eq!(
            metric(node, "exo_prefix_cache_hits_total"),
            1.0,
            "{}",
            node.log_text()
        );
    }
}

#[test]
fn eviction_under_a_small_budget_keeps_answers_right() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let plain = without_prefix_cache(dir.path());
    // About four blocks of the default model's KV (368,640 bytes each).
    let small = NodeProcess::start_args(
        dir.path(),
        "small",
        free_udp_port(),
        &["--prefix-cache-bytes", "1500000"],
    );
    wait_for_ring(&plain, 1);
    wait_for_ring(&small, 1);
    let lyon = conversation(&plain, opening("Lyon", false), "Porto");
    let graz = conversation(&plain, opening("Graz", false), "Bern");
    // Interleaved: the second conversation evicts the first's blocks, so the first's
    // next turn names blocks the node no longer holds.
    let mut first = opening("Lyon", false);
    let lyon_first = answer(&small, &first);
    assert_eq!(lyon_first, lyon.0);
    assert_eq!(conversation(&small, opening("Graz", false), "Bern"), graz);
    assert!(metric(&small, "exo_prefix_cache_evictions_total") > 0.0);
    let list = first.as_array_mut().unwrap();
    list.push(serde_json::json!({"role": "assistant", "content": lyon_first}));
    list.push(serde_json::json!({"role": "user", "content": "And Porto?"}));
    assert_eq!(answer(&small, &first), lyon.1);
    assert!(
        metric(&small, "exo_prefix_cache_misses_total") >= 1.0,
        "{}",
        small.log_text()
    );
    assert!(metric(&small, "exo_prefix_cache_bytes") <= 1_500_000.0);
}
