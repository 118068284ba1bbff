//! The HTTP API's access rules and limits: bearer keys (401 in OpenAI's shape), /healthz
//! open, admin keys, no cross-site use unless allowed, JSON-only chat, and a burst past
//! the concurrency cap answered 429 + Retry-After while every queued request is served.

use std::sync::Arc;
use std::time::Duration;

use exo::api::{ApiConfig, ApiServer};
use exo::app::{DiscoveryMode, Node};
use exo::resource::Managed;

use crate::e2e::chat_body;
use crate::harness::{WAIT, loopback_config};

pub(crate) async fn lone_node(dir: &std::path::Path, api: ApiConfig) -> Node {
    let mut config = loopback_config(dir, "solo", 0);
    config.discovery = DiscoveryMode::None;
    config.api = api;
    // The burst keeps requests waiting behind one another on a shared machine: the test
    // is about the limiter, not the per-token deadline.
    config.flow.step_timeout = Duration::from_secs(60);
    Node::start(config).await.unwrap()
}

/// One request: (status, headers we care about, JSON body or Null).
fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Option<String>, Option<String>, serde_json::Value) {
    let mut request = ureq::request(method, url).timeout(Duration::from_secs(120));
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {url}: {error}"),
    };
    let status = response.status();
    let retry_after = response.header("retry-after").map(String::from);
    let allow_origin = response
        .header("access-control-allow-origin")
        .map(String::from);
    let json = response.into_json().unwrap_or(serde_json::Value::Null);
    (status, retry_after, allow_origin, json)
}

pub(crate) async fn call_async(
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
) -> (u16, Option<String>, Option<String>, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        call(method, &url, &headers, body.as_deref())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_admin_keys_cors_and_json_only_chat() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(
        dir.path(),
        ApiConfig {
            api_keys: vec!["sk-one".into(), "sk-two".into()],
            admin_keys: vec!["adm".into()],
            cors_origins: vec!["https://app.example".into()],
            ..ApiConfig::default()
        },
    )
    .await;
    let base = format!("http://127.0.0.1:{}", node.api_port());
    api_keys_are_required(&base).await;
    admin_keys_guard_the_resources(&base).await;
    cross_site_requests_need_an_allowed_origin(&base, node.api_port()).await;
    chat_takes_json_only(&base).await;
    cli_clients_send_their_keys(&base).await;
    node.shutdown().await.unwrap();
}

/// An `authorization` header with the key.
fn auth(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

/// A JSON `content-type` header.
fn json() -> (&'static str, String) {
    ("content-type", "application/json".to_string())
}

/// No key, a wrong key: 401 with OpenAI's error body; either key works, as a bearer token
/// or as x-api-key; /healthz needs none.
async fn api_keys_are_required(base: &str) {
    let models = format!("{base}/v1/models");
    // No key, a wrong key: 401 with OpenAI's error body.
    for headers in [vec![], vec![auth("sk-three")]] {
        let (status, _, _, body) = call_async("GET", models.clone(), headers, None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    let (status, ..) = call_async(
        "POST",
        format!("{base}/v1/chat/completions"),
        vec![json()],
        Some(chat_body("hi", 1, false).to_string()),
    )
    .await;
    assert_eq!(status, 401);
    // Either key works; /healthz needs none.
    for key in ["sk-one", "sk-two"] {
        let (status, ..) = call_async("GET", models.clone(), vec![auth(key)], None).await;
        assert_eq!(status, 200);
    }
    // Anthropic's clients send the key as x-api-key: it counts as a bearer token does.
    for (key, expected) in [("sk-one", 200), ("sk-three", 401)] {
        let headers = vec![("x-api-key", key.to_string())];
        let (status, ..) = call_async("GET", models.clone(), headers, None).await;
        assert_eq!(status, expected, "x-api-key {key}");
    }
    // Ollama's and Anthropic's endpoints are guarded alike.
    let (status, ..) = call_async("GET", format!("{base}/api/tags"), vec![], None).await;
    assert_eq!(status, 401);
    let (status, ..) = call_async(
        "POST",
        format!("{base}/v1/messages"),
        vec![json()],
        Some("{}".to_string()),
    )
    .await;
    assert_eq!(status, 401);
    let (status, ..) = call_async("GET", format!("{base}/healthz"), vec![], None).await;
    assert_eq!(status, 200);
}

/// Admin: the API key is not enough, the admin key is; no key leaks into the report.
async fn admin_keys_guard_the_resources(base: &str) {
    let report = format!("{base}/v1/resources/report");
    let (status, _, _, body) = call_async("GET", report.clone(), vec![auth("sk-one")], None).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _, body) = call_async(
        "POST",
        format!("{base}/v1/resources/engine/reset"),
        vec![],
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _, body) = call_async("GET", report, vec![auth("adm")], None).await;
    assert_eq!(status, 200);
    let api = &body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "api_server")
        .unwrap()["info"];
    assert_eq!(api["access"]["api_keys"], 2, "{api}");
    assert_eq!(api["limits"]["max_concurrent_requests"], 16, "{api}");
    assert_eq!(api["security"]["cluster"], "open", "{api}");
    assert!(
        !body.to_string().contains("sk-one"),
        "a key leaked into the report"
    );
}

/// Cross-site: an unknown origin gets nothing; the allowed one gets CORS headers; the node's own page is same-origin.
async fn cross_site_requests_need_an_allowed_origin(base: &str, api_port: u16) {
    let models = format!("{base}/v1/models");
    // Cross-site: an unknown origin gets nothing; the allowed one gets CORS headers.
    let (status, _, allow, _) = call_async(
        "GET",
        models.clone(),
        vec![auth("sk-one"), ("origin", "https://evil.example".into())],
        None,
    )
    .await;
    assert_eq!((status, allow), (403, None));
    let (status, _, allow, _) = call_async(
        "GET",
        models.clone(),
        vec![auth("sk-one"), ("origin", "https://app.example".into())],
        None,
    )
    .await;
    assert_eq!(
        (status, allow.as_deref()),
        (200, Some("https://app.example"))
    );
    let (status, _, allow, _) = call_async(
        "OPTIONS",
        format!("{base}/v1/chat/completions"),
        vec![("origin", "https://app.example".into())],
        None,
    )
    .await;
    assert_eq!(
        (status, allow.as_deref()),
        (204, Some("https://app.example"))
    );

    // The node's own page: a same-origin POST (browsers send Origin on it) is served,
    // with no CORS headers; a neighbouring port is another origin and is refused.
    let (status, _, allow, body) = call_async(
        "POST",
        format!("{base}/v1/chat/completions"),
        vec![auth("sk-one"), json(), ("origin", base.to_string())],
        Some(chat_body("Say hi.", 1, false).to_string()),
    )
    .await;
    assert_eq!((status, allow), (200, None), "{body}");
    let other = format!("http://127.0.0.1:{}", api_port + 1);
    let (status, _, allow, _) = call_async(
        "POST",
        format!("{base}/v1/chat/completions"),
        vec![auth("sk-one"), json(), ("origin", other)],
        Some(chat_body("Say hi.", 1, false).to_string()),
    )
    .await;
    assert_eq!((status, allow), (403, None));
    // The page itself needs no key (it asks for one); the data behind it does.
    let page = ureq::get(&format!("{base}/")).call().unwrap();
    assert!(page.content_type().starts_with("text/html"));
    assert!(page.into_string().unwrap().contains("exo"));
    let (status, ..) = call_async("GET", format!("{base}/metrics"), vec![], None).await;
    assert_eq!(status, 401);
    let (status, ..) = call_async("GET", format!("{base}/v1/events"), vec![], None).await;
    assert_eq!(status, 401);
}

/// A chat request that is not JSON (what a cross-site form could send): 415.
async fn chat_takes_json_only(base: &str) {
    let (status, _, _, body) = call_async(
        "POST",
        format!("{base}/v1/chat/completions"),
        vec![
            auth("sk-one"),
            ("content-type", "application/x-www-form-urlencoded".into()),
        ],
        Some(chat_body("hi", 1, false).to_string()),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    let (status, _, _, body) = call_async(
        "POST",
        format!("{base}/v1/chat/completions"),
        vec![auth("sk-one"), json()],
        Some(chat_body("Say hi.", 2, false).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// The CLI clients send the keys they are given.
async fn cli_clients_send_their_keys(base: &str) {
    let exo = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::support::exo_bin())
                .args(args)
                .env_remove("EXO_API_KEY")
                .env_remove("EXO_ADMIN_KEY")
                .output()
                .unwrap()
        })
    };
    let chat = |key: Option<&str>| {
        let mut args: Vec<String> = [
            "chat",
            "--node",
            base,
            "--prompt",
            "Say hi.",
            "--max-tokens",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(key) = key {
            args.extend(["--api-key".to_string(), key.to_string()]);
        }
        exo(args)
    };
    let refused = chat(None).await.unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    let answered = chat(Some("sk-two")).await.unwrap();
    assert!(answered.status.success(), "{answered:?}");
    let listed = exo([
        "resources",
        "--node",
        base,
        "--admin-key",
        "adm",
        "--json",
        "list",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect())
    .await
    .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let refused = exo(["resources", "--node", base, "--api-key", "sk-one", "list"]
        .iter()
        .map(|s| s.to_string())
        .collect())
    .await
    .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
}

/// The node's limiter figures, waited on until `ready` holds.
async fn wait_for_limits(
    api: &Arc<Managed<ApiServer>>,
    ready: impl Fn(&serde_json::Value) -> bool,
) {
    let limiter = api.ensure_ready().await.unwrap().access().1;
    tokio::time::timeout(WAIT, async {
        while !ready(&limiter.to_json()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("limits never got there: {}", limiter.to_json()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_cap_gets_429_and_every_queued_request_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(
        dir.path(),
        ApiConfig {
            max_concurrent: 1,
            max_queued: 2,
            ..ApiConfig::default()
        },
    )
    .await;
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", node.api_port());
    let mut long = chat_body("Count to one hundred.", 48, false);
    long["ignore_eos"] = true.into();
    let send = |body: &serde_json::Value| {
        tokio::spawn(call_async(
            "POST",
            url.clone(),
            vec![("content-type", "application/json".into())],
            Some(body.to_string()),
        ))
    };
    // One served, two queued: the state itself is waited on, then the rest are refused.
    let mut admitted = vec![send(&long)];
    wait_for_limits(&node.api, |l| l["in_flight"] == 1).await;
    admitted.push(send(&long));
    admitted.push(send(&long));
    wait_for_limits(&node.api, |l| l["queued"] == 2).await;
    let refused: Vec<_> = (0..4).map(|_| send(&long)).collect();
    for request in refused {
        let (status, retry_after, _, body) = request.await.unwrap();
        assert_eq!(status, 429, "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    }
    for request in admitted {
        let (status, _, _, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 48, "{body}");
    }
    wait_for_limits(&node.api, |l| {
        l["in_flight"] == 0 && l["queued"] == 0 && l["served"] == 3 && l["rejected_429"] == 4
    })
    .await;
    node.shutdown().await.unwrap();
}

/// Opens `GET /v1/events` on a raw connection and reads the status code; the stream (if
/// any) stays open while the returned socket lives.
fn open_events(port: u16) -> (u16, std::net::TcpStream) {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"));
    (status, stream)
}

/// `/v1/events` streams cost a task each that renders the cluster state four times a
/// second: they are capped and counted like chat requests (429 past the cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(dir.path(), ApiConfig::default()).await;
    let port = node.api_port();
    let (mut open, refused) = tokio::task::spawn_blocking(move || {
        let mut open = Vec::new();
        loop {
            let (status, stream) = open_events(port);
            match status {
                200 => open.push(stream),
                429 => return (open, Some(stream)),
                other => panic!("GET /v1/events: {other}"),
            }
            if open.len() > 100 {
                return (open, None);
            }
        }
    })
    .await
    .unwrap();
    assert!(
        refused.is_some(),
        "{} event streams were opened and none refused",
        open.len()
    );
    let limits = node.api.ensure_ready().await.unwrap().access().1.to_json();
    assert_eq!(limits["max_event_streams"], open.len(), "{limits}");
    assert_eq!(limits["event_streams"], open.len(), "{limits}");
    assert_eq!(limits["event_streams_rejected_429"], 1, "{limits}");
    let metrics = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        metrics.contains(&format!("exo_event_streams {}\n", open.len()))
            && metrics.contains("exo_event_streams_rejected_total 1\n"),
        "{metrics}"
    );
    // A stream that ends gives its place back.
    drop(open.pop());
    let limiter = node.api.ensure_ready().await.unwrap().access().1;
    let want = open.len();
    tokio::time::timeout(WAIT, async {
        while limiter.to_json()["event_streams"] != want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a closed stream kept its place: {}", limiter.to_json()));
    let (status, _again) = tokio::task::spawn_blocking(move || open_events(port))
        .await
        .unwrap();
    assert_eq!(status, 200);
    drop(open);
    node.shutdown().await.unwrap();
}
