//! One request can be followed through every node's log: its id travels in the gRPC
//! metadata of every node-to-node call (`x-exo-request-id`), each node logs its part
//! under that id, and `--log-format json` writes one JSON object per line.

use std::time::{Duration, Instant};

use crate::e2e::{PROMPT, chat_body};
use crate::harness::{NodeProcess, WAIT, free_udp_port, wait_for_ring};
use crate::support::default_model;

#[test]
fn a_requests_id_is_in_every_nodes_json_log() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let nodes: Vec<NodeProcess> = ["t1", "t2", "t3"]
        .iter()
        .map(|n| NodeProcess::start_args(dir.path(), n, port, &["--log-format", "json"]))
        .collect();
    for node in &nodes {
        wait_for_ring(node, 3);
    }
    let response = ureq::post(&format!("{}/v1/chat/completions", nodes[0].url()))
        .timeout(Duration::from_secs(120))
        .send_json(chat_body(PROMPT, 4, false))
        .unwrap();
    let request_id = response
        .header("x-request-id")
        .expect("the response names its request")
        .to_string();
    let body: serde_json::Value = response.into_json().unwrap();
    assert_eq!(body["id"], format!("chatcmpl-{request_id}"));
    assert_eq!(body["exo"]["request_id"], request_id.as_str());

    // Each node logs its part (the origin: the request's span; the others: the calls that
    // carried its steps, results and finish). Wait for the lines, not for a time.
    let deadline = Instant::now() + WAIT;
    for node in &nodes {
        loop {
            let log = node.log_text();
            let lines: Vec<serde_json::Value> = log
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| {
                        panic!("{} logged a line that is not JSON ({e}): {l}", node.name)
                    })
                })
                .collect();
            // The origin: lines in the request's span. The others: lines in the span of a
            // call whose metadata named the request (not only the id in some message).
            let (span, field) = if node.name == "t1" {
                ("request", "id")
            } else {
                ("rpc", "request_ids")
            };
            let in_span = lines.iter().any(|line| {
                line["spans"].as_array().is_some_and(|spans| {
                    spans.iter().any(|s| {
                        s["name"] == span
                            && s[field]
                                .as_str()
                                .is_some_and(|ids| ids.split(',').any(|id| id == request_id))
                    })
                })
            });
            if in_span {
                assert!(
                    lines
                        .iter()
                        .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
                    "{log}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {request_id}:\n{log}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
