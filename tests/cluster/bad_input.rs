//! The HTTP API refuses bad requests with 4xx and an OpenAI-style error body, and keeps
//! serving.

use exo::app::{DiscoveryMode, Node};

use crate::harness::{get_json, loopback_config, post_json, post_raw};

async fn lone_node(dir: &std::path::Path) -> Node {
    let mut config = loopback_config(dir, "solo", 0);
    config.discovery = DiscoveryMode::None;
    Node::start(config).await.unwrap()
}

fn check_error(status: u16, body: &serde_json::Value, expected_status: u16, words: &str) {
    assert_eq!(status, expected_status, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"));
    assert!(
        message.contains(words),
        "{message:?} should mention {words:?}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chat_requests_get_4xx_with_an_openai_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(dir.path()).await;
    let base = format!("http://127.0.0.1:{}", node.api_port());
    tokio::task::spawn_blocking(move || {
        let url = format!("{base}/v1/chat/completions");
        let user = serde_json::json!([{"role": "user", "content": "Hi"}]);
        let (s, b) = post_raw(&url, "{not json");
        check_error(s, &b, 400, "not valid JSON");
        let (s, b) = post_raw(&url, "");
        check_error(s, &b, 400, "empty");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "gpt-9", "messages": user}));
        check_error(s, &b, 404, "gpt-9");
        assert_eq!(b["error"]["code"], "model_not_found");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": []}));
        check_error(s, &b, 400, "messages must not be empty");
        let (s, b) = post_json(&url, &serde_json::json!({"messages": user}));
        check_error(s, &b, 400, "model");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "max_tokens": 0}));
        check_error(s, &b, 400, "max_tokens");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "max_tokens": 1_000_000}));
        check_error(s, &b, 400, "max_tokens");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "max_tokens": -3}));
        check_error(s, &b, 400, "schema");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "temperature": "hot"}));
        check_error(s, &b, 400, "schema");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "temperature": 7}));
        check_error(s, &b, 400, "temperature");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": "Hi"}));
        check_error(s, &b, 400, "schema");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": [{"role": "wizard", "content": "x"}]}));
        check_error(s, &b, 400, "wizard");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "stop": ["a","b","c","d","e"]}));
        check_error(s, &b, 400, "stop");
        let long = "word ".repeat(9000);
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": long}]}));
        check_error(s, &b, 400, "context");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "top_logprobs": 3}));
        check_error(s, &b, 400, "logprobs");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "logprobs": true, "top_logprobs": 50}));
        check_error(s, &b, 400, "at most 20");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "response_format": {"type": "json_schema"}}));
        check_error(s, &b, 400, "json_schema");
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "stream_options": {"include_usage": true}}));
        check_error(s, &b, 400, "stream");

        // Text completions share the checks, and have their own.
        let text = format!("{base}/v1/completions");
        let (s, b) = post_json(&text, &serde_json::json!({"model": "smollm2-135m"}));
        check_error(s, &b, 400, "prompt is required");
        let (s, b) = post_json(&text, &serde_json::json!({"model": "smollm2-135m", "prompt": ""}));
        check_error(s, &b, 400, "empty");
        let (s, b) = post_json(&text, &serde_json::json!({"model": "smollm2-135m", "prompt": [1, 99_999_999]}));
        check_error(s, &b, 400, "vocabulary");
        let (s, b) = post_json(&text, &serde_json::json!({"model": "smollm2-135m", "prompt": [[1], [2]]}));
        check_error(s, &b, 400, "one prompt per request");
        let (s, b) = post_json(&text, &serde_json::json!({"model": "smollm2-135m", "prompt": "Hi", "echo": true}));
        check_error(s, &b, 400, "echo");
        let (s, b) = post_json(&text, &serde_json::json!({"model": "smollm2-135m", "prompt": "Hi", "n": 3}));
        check_error(s, &b, 400, "n = 1");
        let (s, b) = post_json(&text, &serde_json::json!({"model": "gpt-9", "prompt": "Hi"}));
        check_error(s, &b, 404, "gpt-9");
        let (s, b) = post_json(&text, &serde_json::json!({"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2, "temperature": 0}));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["object"], "text_completion");
        assert_eq!(b["usage"]["completion_tokens"], 2);
        let (s, b) = post_json(&text, &serde_json::json!({"model": "smollm2-135m", "prompt": [1, 2, 3], "max_tokens": 1, "temperature": 0}));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["usage"]["prompt_tokens"], 3);

        let (s, b) = post_json(&format!("{base}/v1/nothing-here"), &serde_json::json!({}));
        check_error(s, &b, 404, "no such endpoint");
        let (s, b) = post_json(&format!("{base}/v1/resources/no-such-thing/reset"), &serde_json::json!({}));
        check_error(s, &b, 404, "no-such-thing");

        // And it still answers.
        let (s, b) = post_json(&url, &serde_json::json!({"model": "smollm2-135m", "messages": user, "max_tokens": 3, "temperature": 0}));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["choices"][0]["finish_reason"], "length");
        assert_eq!(b["usage"]["completion_tokens"], 3);
        let health = get_json(&format!("{base}/healthz")).unwrap();
        assert_eq!(health["status"], "ok");
        let models = get_json(&format!("{base}/v1/models")).unwrap();
        assert_eq!(models["data"][0]["id"], "smollm2-135m");
    })
    .await
    .unwrap();
    node.shutdown().await.unwrap();
}
