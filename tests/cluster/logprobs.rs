//! Logprobs are the model's: the log-softmax of the logits the token was sampled from,
//! computed on the node that holds the output head and carried back to the origin. At
//! temperature 0 the chosen token is the most likely one; the alternatives' probabilities
//! are a part of the whole; and a 3-node ring reports the same numbers as one node.

use crate::e2e::{PROMPT, three_node_ring};
use crate::harness::{NodeProcess, free_udp_port, post_json, wait_for_ring};
use crate::support::default_model;

fn logprobs_of(node: &NodeProcess) -> (String, Vec<serde_json::Value>) {
    let (status, body) = post_json(
        &format!("{}/v1/chat/completions", node.url()),
        &serde_json::json!({
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 12,
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": 5,
        }),
    );
    assert_eq!(status, 200, "{body}\n{}", node.log_text());
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    (text, content)
}

/// Checks one node's logprobs on their own.
fn check_real(content: &[serde_json::Value]) {
    // "The capital of Germany is Berlin." then end of sequence (which has no entry).
    assert!(content.len() >= 5, "{content:?}");
    for entry in content {
        let logprob = entry["logprob"].as_f64().unwrap();
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5, "{entry}");
        // Greedy: the chosen token is the argmax, so it heads the alternatives.
        assert_eq!(top[0]["token"], entry["token"], "{entry}");
        assert_eq!(top[0]["logprob"], entry["logprob"], "{entry}");
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{entry}");
        assert!(values.iter().all(|&v| v <= 0.0), "{entry}");
        let mass: f64 = values.iter().map(|v| v.exp()).sum();
        assert!(mass <= 1.0 + 1e-5, "top-5 mass {mass}: {entry}");
        // A real distribution, not a placeholder: the best token has some mass, and the
        // alternatives differ.
        assert!(logprob > -20.0 && values[4] < values[0], "{entry}");
    }
}

#[test]
fn logprobs_are_the_models_and_a_ring_reports_the_same_as_one_node() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let single = NodeProcess::start(dir.path(), "solo", free_udp_port());
    wait_for_ring(&single, 1);
    let (solo_text, solo) = logprobs_of(&single);
    check_real(&solo);
    drop(single);

    let ring = three_node_ring(dir.path());
    for node in &ring {
        let (text, content) = logprobs_of(node);
        assert_eq!(text, solo_text, "through {}", node.name);
        assert_eq!(content.len(), solo.len(), "through {}", node.name);
        check_real(&content);
        for (a, b) in content.iter().zip(&solo) {
            assert_eq!(a["token"], b["token"], "through {}", node.name);
            let (x, y) = (
                a["logprob"].as_f64().unwrap(),
                b["logprob"].as_f64().unwrap(),
            );
            assert!((x - y).abs() < 1e-4, "{x} vs {y} through {}", node.name);
            for (p, q) in a["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["top_logprobs"].as_array().unwrap())
            {
                assert_eq!(p["token"], q["token"], "through {}", node.name);
                let (x, y) = (
                    p["logprob"].as_f64().unwrap(),
                    q["logprob"].as_f64().unwrap(),
                );
                assert!((x - y).abs() < 1e-4, "{x} vs {y} through {}", node.name);
            }
        }
    }
}
