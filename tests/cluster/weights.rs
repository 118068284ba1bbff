//! Weights from peers: a three-process ring in which only one node has the model file
//! answers exactly as one `exo generate` does, and the other two received only the bytes
//! of their own layers (the header and their tensors), from the node that has it.

use std::fs::File;
use std::path::Path;

use exo::catalog::header::{HeaderLimits, read_local_header};
use exo::catalog::layout::{FileLayout, ModelLayout};
use exo::catalog::{WeightFormat, tensor_ranges};

use crate::e2e::{PROMPT, ask, generate_locally};
use crate::harness::{NodeProcess, free_udp_port, get_json, wait_for_ring};
use crate::support::{default_model, models_dir};

/// A Hub address where nothing listens: a node that tried the Hub fails at once, and no
/// test reaches the internet.
const NO_HUB: &str = "http://127.0.0.1:9";

/// The engine's report of a node: its loaded shards and its `weights` counters.
pub fn engine_info(node: &NodeProcess) -> serde_json::Value {
    let resources = get_json(&format!("{}/v1/resources", node.url())).unwrap();
    resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "inference_engine")
        .unwrap_or_else(|| panic!("no engine in {resources}"))["info"]
        .clone()
}

pub fn layout(path: &Path) -> FileLayout {
    read_local_header(
        &mut File::open(path).unwrap(),
        WeightFormat::Gguf,
        HeaderLimits::default(),
    )
    .unwrap()
    .layout
}

/// The bytes a node serving `[start, end)` needs: the header and its tensors.
pub fn share(file: &FileLayout, start: usize, end: usize) -> u64 {
    let model = ModelLayout {
        format: WeightFormat::Gguf,
        files: vec![file.clone()],
        n_layers: 30,
    };
    let tensors: u64 = tensor_ranges(&model, start..end)
        .unwrap()
        .iter()
        .map(|t| t.len())
        .sum();
    file.header_len + tensors
}

/// "[10, 20)" → (10, 20).
pub fn parse_shard(text: &str) -> (usize, usize) {
    let inner = text.trim_start_matches('[').trim_end_matches(')');
    let (a, b) = inner.split_once(", ").unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn a_ring_where_one_node_has_the_file_answers_exactly_and_the_others_receive_only_their_layers() {
    let expected = generate_locally(PROMPT, 32);
    assert!(expected.contains("Berlin"), "{expected}");
    let file = layout(default_model());
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let env = [("HF_ENDPOINT", NO_HUB)];
    let mut nodes = vec![NodeProcess::start_with(
        dir.path(),
        "n1",
        port,
        &models_dir(),
        &env,
    )];
    nodes.extend(NodeProcess::start_without_weights(
        dir.path(),
        &["n2", "n3"],
        port,
        &env,
    ));
    for node in &nodes {
        wait_for_ring(node, 3);
    }

    // Through a node that had nothing of the model, then through the one that has it.
    for node in [&nodes[1], &nodes[0]] {
        let body = ask(node, &expected);
        assert_eq!(
            body["exo"]["partition"].as_array().unwrap().len(),
            3,
            "{body}"
        );
    }

    let holder = engine_info(&nodes[0]);
    assert_eq!(holder["weights"]["bytes_from_peers"], 0, "{holder}");
    assert_eq!(holder["weights"]["holding"]["whole"], true, "{holder}");
    let mut served_to_others = 0;
    for node in &nodes[1..] {
        let info = engine_info(node);
        let shards = info["loaded_shards"].as_array().unwrap();
        assert_eq!(shards.len(), 1, "{info}");
        let (start, end) = parse_shard(shards[0].as_str().unwrap());
        let expected_bytes = share(&file, start, end) as f64;
        let received = info["weights"]["bytes_from_peers"].as_u64().unwrap() as f64;
        assert!(
            (received - expected_bytes).abs() <= 0.05 * expected_bytes,
            "{} runs layers {start}..{end}: received {received} bytes, its share is {expected_bytes}\n{info}",
            node.name
        );
        eprintln!(
            "{} runs layers {start}..{end}: received {received} bytes, share {expected_bytes}",
            node.name
        );
        assert!(
            received < 0.6 * file.size as f64,
            "{} received most of the file: {received}",
            node.name
        );
        assert_eq!(info["weights"]["bytes_from_hub"], 0, "{info}");
        served_to_others += received as u64;
    }
    // Every byte the others received came from the holder (a partial node may serve the
    // header to another: never more than the holder's part plus one header).
    let served = holder["weights"]["bytes_served"].as_u64().unwrap();
    assert!(
        served + file.header_len >= served_to_others && served <= served_to_others,
        "the holder served {served} bytes, the others received {served_to_others}"
    );
}

#[test]
fn a_node_without_the_model_and_no_peer_holding_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let empty = dir.path().join("models");
    std::fs::create_dir_all(&empty).unwrap();
    let mut node = NodeProcess::start_with(
        dir.path(),
        "alone",
        port,
        &empty,
        &[("HF_ENDPOINT", NO_HUB), ("EXO_PEER_WAIT_MS", "500")],
    );
    let status = node.child.wait().unwrap();
    assert!(!status.success());
    let log = node.log_text();
    assert!(
        log.contains("node alone lacks the header of smollm2-135m and no peer holds them"),
        "{log}"
    );
}
