//! A node whose layers no peer holds downloads only those layers' bytes from the Hub
//! (here the fake Hub of the catalog tests, on loopback), and the ring answers exactly as
//! one `exo generate` does.

use exo::catalog::Catalog;

use crate::connections::metric;
use crate::e2e::{PROMPT, chat_body, generate_locally};
use crate::fake_hub::FakeHub;
use crate::harness::{NodeProcess, free_udp_port, post_json, wait_for_ring};
use crate::support::default_model;
use crate::weights::{engine_info, layout, parse_shard, share};

/// The fake Hub serving the default model, and two nodes without weights that fetch their
/// layers from it (no peer holds them), joined into a ring.
fn two_nodes_with_nothing(dir: &std::path::Path) -> (FakeHub, Vec<NodeProcess>) {
    let bytes = std::fs::read(default_model()).unwrap();
    let entry = Catalog::builtin().get("smollm2-135m").unwrap().clone();
    let source = entry.huggingface.clone().unwrap();
    let hub = FakeHub::start();
    hub.add(&source.repo, &source.revision, &entry.files[0].path, bytes);
    let hf_home = dir.join("hf-home");
    let env = [
        ("HF_ENDPOINT", hub.endpoint.as_str()),
        ("HF_HOME", hf_home.to_str().unwrap()),
        ("EXO_PEER_WAIT_MS", "300"),
    ];
    let nodes = NodeProcess::start_without_weights(dir, &["n1", "n2"], free_udp_port(), &env);
    for node in &nodes {
        wait_for_ring(node, 2);
    }
    (hub, nodes)
}

#[test]
fn nodes_with_nothing_fetch_only_their_layers_from_the_hub_and_answer_exactly() {
    let expected = generate_locally(PROMPT, 16);
    let size = std::fs::metadata(default_model()).unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    let (hub, nodes) = two_nodes_with_nothing(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let (status, body) = post_json(&url, &chat_body(PROMPT, 16, false));
    assert_eq!(
        status,
        200,
        "{body}\n{}\n{}",
        nodes[0].log_text(),
        nodes[1].log_text()
    );
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());

    let file = layout(default_model());
    let mut shares = 0;
    for node in &nodes {
        let info = engine_info(node);
        let hub_bytes = info["weights"]["bytes_from_hub"].as_u64().unwrap() as f64;
        let shards = info["loaded_shards"].as_array().unwrap();
        assert_eq!(shards.len(), 1, "{info}");
        let (start, end) = parse_shard(shards[0].as_str().unwrap());
        let own = share(&file, start, end);
        shares += own;
        eprintln!(
            "{} runs {start}..{end}: {hub_bytes} bytes from the Hub, share {own}",
            node.name
        );
        // Its log shows the first load: the download's progress to its end, then the
        // layers loading.
        let log = node.log_text();
        assert!(
            log.contains(&format!("smollm2-135m (layers {start}..{end})")) && log.contains(" done"),
            "{} shows no download progress:\n{log}",
            node.name
        );
        assert!(log.contains("loading smollm2-135m"), "{log}");
        assert!(
            (hub_bytes - own as f64).abs() <= 0.05 * own as f64,
            "{} runs layers {start}..{end}: fetched {hub_bytes} bytes from the Hub, its share is {own}\n{info}",
            node.name
        );
    }
    // The Hub sent each node its share and nothing more (header reads may run a little
    // past the header).
    let served = hub.served();
    assert!(
        served <= shares + (4 << 20),
        "the Hub sent {served} bytes; the shares are {shares} (file {size})"
    );
}

/// A prompt of several prefill chunks reaches nodes that are still fetching their layers:
/// every chunk waits for the one fetch of its range and then runs in the order it came
/// (each used to start its own wait, and a later chunk could run first, fail on its
/// position and cost a re-plan), so the answer is exact and nothing is planned again.
#[test]
fn prompt_chunks_that_arrive_during_the_fetch_run_in_order_without_a_replan() {
    // About three chunks of 256 tokens.
    let words: Vec<String> = (1..=260).map(|i| format!("item{i}")).collect();
    let prompt = format!("Repeat the last item of this list: {}", words.join(" "));
    let expected = generate_locally(&prompt, 8);
    let dir = tempfile::tempdir().unwrap();
    let (_hub, nodes) = two_nodes_with_nothing(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let (status, body) = post_json(&url, &chat_body(&prompt, 8, false));
    let logs = || format!("{}\n{}", nodes[0].log_text(), nodes[1].log_text());
    assert_eq!(status, 200, "{body}\n{}", logs());
    assert_eq!(
        body["choices"][0]["message"]["content"],
        expected.as_str(),
        "{}",
        logs()
    );
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 512,
        "the prompt should span three chunks: {body}"
    );
    assert_eq!(
        metric(&nodes[0], "exo_replans_total", ""),
        Some(0.0),
        "the origin planned again while its nodes fetched their layers:\n{}",
        logs()
    );
}
