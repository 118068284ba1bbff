//! Many users at once through a three-node ring: batching never changes a token, and a
//! request cancelled mid-batch frees its caches and leaves the others untouched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exo::catalog::{ModelFormat, ResolvedModel};
use exo::engine::serve::local::{LocalRequest, generate};
use exo::engine::{ChatMessage, DeviceChoice, EngineConfig, LoadedModel, SamplingParams};

use crate::e2e::three_node_ring;
use crate::harness::{WAIT, get_json, sse_chunks};
use crate::support::default_model;

/// A request of the load: its prompt and how many tokens it asks for.
struct Case {
    prompt: String,
    max_tokens: usize,
}

/// Sixteen requests with prompts from ~20 to ~1,000 tokens (up to four prompt chunks) and
/// different lengths; most are short, to keep the test's time.
fn cases() -> Vec<Case> {
    let sentence = "Rivers carve valleys over thousands of years, and the towns along them grow with the trade they carry. ";
    (0..16)
        .map(|i| {
            // 1 to 47 sentences of ~21 tokens: 20 to ~1,000 prompt tokens.
            let repeats = [1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12, 16, 20, 30, 47][i];
            let mut prompt = format!("Question {i}: summarise this text. ");
            prompt.push_str(&sentence.repeat(repeats));
            Case {
                prompt,
                max_tokens: 6 + (i * 5) % 23,
            }
        })
        .collect()
}

/// Each case's greedy answer when it runs alone, on this process's engine.
fn answers_alone(cases: &[Case]) -> Vec<String> {
    let resolved = ResolvedModel {
        id: "smollm2-135m".into(),
        path: default_model().to_path_buf(),
        format: ModelFormat::Gguf,
    };
    let model =
        Arc::new(LoadedModel::open(&EngineConfig::new(resolved, DeviceChoice::Cpu)).unwrap());
    let ranges = model.even_ranges(1).unwrap();
    cases
        .iter()
        .map(|case| {
            let prompt = model
                .tokenizer()
                .encode_chat(&[ChatMessage::new("user", case.prompt.clone())])
                .unwrap();
            let request = LocalRequest {
                prompt,
                max_tokens: case.max_tokens,
                sampling: SamplingParams::greedy(),
                stop: Vec::new(),
                ignore_eos: false,
            };
            generate(&model, &ranges, &request, |_| {}).unwrap().text
        })
        .collect()
}

fn body(case: &Case, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": case.prompt}],
        "max_tokens": case.max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// The engine info of every node: (active requests, KV cache bytes).
fn engine_caches(url: &str) -> (u64, u64) {
    let resources = get_json(&format!("{url}/v1/resources")).unwrap();
    let engine = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "inference_engine")
        .cloned()
        .unwrap();
    // A missing field is not "nothing held": an engine that has not loaded its model
    // reports neither, and that must fail the check, not pass it.
    let field = |name: &str| {
        engine["info"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("the engine's info has no {name}: {engine}"))
    };
    (field("active_requests"), field("kv_cache_bytes"))
}

#[test]
fn sixteen_concurrent_requests_through_a_ring_each_get_what_they_get_alone() {
    let cases = cases();
    let expected = answers_alone(&cases);
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_node_ring(dir.path());
    // Requests go to all three nodes (each is the origin of some), all at once.
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let handles: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let url = format!("{}/v1/chat/completions", urls[i % urls.len()]);
            let body = body(case, false);
            std::thread::spawn(move || {
                let response: serde_json::Value = match ureq::post(&url)
                    .timeout(Duration::from_secs(600))
                    .send_json(body)
                {
                    Ok(response) => response.into_json().unwrap(),
                    Err(ureq::Error::Status(code, response)) => {
                        panic!(
                            "request {i}: {code} {}",
                            response.into_string().unwrap_or_default()
                        )
                    }
                    Err(error) => panic!("request {i}: {error}"),
                };
                response["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let text = handle.join().unwrap();
        assert_eq!(
            text, expected[i],
            "request {i} changed when batched with the others"
        );
    }
    // The shards did batch: some steps ran together.
    let batched = nodes.iter().any(|n| {
        n.log_text()
            .lines()
            .any(|l| l.contains("batch of") && !l.contains("batch of 1 steps"))
    });
    assert!(batched, "no node ever ran two steps in one batch");
}

#[test]
fn a_request_cancelled_mid_batch_frees_its_caches_and_the_others_finish_unchanged() {
    let cases: Vec<Case> = cases()
        .into_iter()
        .take(4)
        .map(|c| Case {
            max_tokens: 40,
            ..c
        })
        .collect();
    let expected = answers_alone(&cases);
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_node_ring(dir.path());
    let url = format!("{}/v1/chat/completions", nodes[0].url());
    let handles: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let url = url.clone();
            let body = body(case, true);
            std::thread::spawn(move || {
                let response = ureq::post(&url)
                    .timeout(Duration::from_secs(600))
                    .send_json(body)
                    .unwrap();
                let mut text = String::new();
                for chunk in sse_chunks(response) {
                    if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                        text.push_str(piece);
                    }
                    // The first request's client leaves after a few pieces.
                    if i == 0 && text.len() > 10 {
                        return None;
                    }
                }
                Some(text)
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        match handle.join().unwrap() {
            None => assert_eq!(i, 0),
            Some(text) => assert_eq!(
                text, expected[i],
                "request {i} changed when another was cancelled"
            ),
        }
    }
    // Every node drops every cache: the cancelled request's as well as the finished ones'.
    for node in &nodes {
        let deadline = Instant::now() + WAIT;
        loop {
            let (active, bytes) = engine_caches(&node.url());
            if active == 0 && bytes == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still holds {active} caches ({bytes} bytes)",
                node.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
