//! Memory-aware plans: nodes started with `--memory-limit` (small machines, simulated) get
//! no more layers than fit their free memory, and a cluster too small for the model is
//! refused with the shortfall named, before any node fetches a layer.

use std::time::{Duration, Instant};

use crate::e2e::{PROMPT, chat_body, generate_locally};
use crate::harness::{NodeProcess, WAIT, free_udp_port, get_json, post_json, wait_for_ring};
use crate::support::{default_model, models_dir};
use crate::weights::engine_info;

const NO_HUB: &str = "http://127.0.0.1:9";

/// Starts n1 (with the model file) and n2, n3 (with nothing), each limited to `limits`.
fn ring(dir: &std::path::Path, limits: [&str; 3]) -> Vec<NodeProcess> {
    default_model();
    let port = free_udp_port();
    let mut nodes = Vec::new();
    for (i, (name, limit)) in ["n1", "n2", "n3"].iter().zip(limits).enumerate() {
        let models = if i == 0 {
            models_dir()
        } else {
            let empty = dir.join(format!("{name}-models"));
            std::fs::create_dir_all(&empty).unwrap();
            empty
        };
        let mut env = vec![("HF_ENDPOINT", NO_HUB)];
        if !limit.is_empty() {
            env.push(("EXO_MEMORY_LIMIT", limit));
        }
        nodes.push(NodeProcess::start_with(dir, name, port, &models, &env));
    }
    nodes
}

/// Waits until `node` sees `count` nodes (itself included) with Ready links.
fn wait_for_nodes(node: &NodeProcess, count: usize) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(topology) = get_json(&format!("{}/v1/topology", node.url()))
            && topology["nodes"].as_array().is_some_and(|nodes| {
                nodes.len() == count
                    && nodes
                        .iter()
                        .all(|n| n["link_state"] == "self" || n["link_state"] == "ready")
            })
        {
            return topology;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not see {count} nodes:\n{}",
            node.name,
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cluster_too_small_for_the_model_is_refused_with_the_shortfall_before_any_layer_moves() {
    // SmolLM2-135M needs ~98 MB of weights and ~94 MB of KV reserve: three 60 MB nodes
    // fall ~12 MB short.
    let dir = tempfile::tempdir().unwrap();
    let nodes = ring(dir.path(), ["60MB", "60MB", "60MB"]);
    for node in &nodes {
        wait_for_nodes(node, 3);
    }
    let topology = wait_for_nodes(&nodes[1], 3);
    let error = topology["partition"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("too small for model smollm2-135m"),
        "{topology}"
    );

    let url = format!("{}/v1/chat/completions", nodes[1].url());
    let (status, body) = post_json(&url, &chat_body(PROMPT, 8, false));
    assert_ne!(status, 200, "{body}");
    let message = body.to_string();
    assert!(message.contains("short by"), "{message}");
    assert!(message.contains("have 180.0 MB free"), "{message}");
    assert!(message.contains("KV reserve"), "{message}");

    // Nothing but the header moved: no node loaded or fetched a layer.
    for node in &nodes {
        let info = engine_info(node);
        assert_eq!(
            info["loaded_shards"].as_array().map(Vec::len),
            Some(0),
            "{info}"
        );
        assert!(
            info["weights"]["bytes_from_peers"].as_u64().unwrap() < 2_000_000,
            "{} fetched more than the header: {info}",
            node.name
        );
    }
}

#[test]
fn a_small_node_gets_only_the_layers_its_memory_holds_and_the_answer_is_unchanged() {
    let expected = generate_locally(PROMPT, 16);
    let dir = tempfile::tempdir().unwrap();
    // ~6.4 MB per layer (weights and KV reserve): 30 MB holds 4 layers.
    let nodes = ring(dir.path(), ["", "30MB", ""]);
    for node in &nodes {
        wait_for_ring(node, 3);
    }
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let (status, body) = post_json(&url, &chat_body(PROMPT, 16, false));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());
    let topology = get_json(&format!("{}/v1/topology", nodes[0].url())).unwrap();
    let entries = topology["partition"]["entries"].as_array().unwrap();
    let small = entries.iter().find(|e| e["node_id"] == "n2").unwrap();
    let layers = small["end_layer"].as_u64().unwrap() - small["start_layer"].as_u64().unwrap();
    assert!(
        (1..=4).contains(&layers),
        "n2 (30 MB) runs {layers} layers: {topology}"
    );
}
