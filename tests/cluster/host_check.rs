//! Names and proxies: the API answers only to the names the node serves (so a
//! DNS-rebinding page gets nothing), admin POSTs are never simple requests, and a request
//! a proxy forwarded is not admin by loopback.

use exo::api::ApiConfig;

use crate::api_access::{call_async, lone_node};

/// A DNS-rebinding page reaches the node under the attacker's name: Origin and Host both
/// say `evil.example`, and the request comes from the victim's browser on loopback. No
/// name but an IP address, a loopback name or a `--public-name` is served (health checks
/// aside), and no admin POST is a simple request a page could send without a preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_rebinding_page_gets_nothing_and_admin_posts_need_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(
        dir.path(),
        ApiConfig {
            public_names: vec!["exo.example".into()],
            ..ApiConfig::default()
        },
    )
    .await;
    let port = node.api_port();
    let base = format!("http://127.0.0.1:{port}");
    let rebound = |host: &str| {
        vec![
            ("host", format!("{host}:{port}")),
            ("origin", format!("http://{host}:{port}")),
        ]
    };
    let json = ("content-type", "application/json".to_string());
    for (method, path) in [
        ("GET", "/v1/resources/report"),
        ("GET", "/v1/models"),
        ("GET", "/"),
        ("POST", "/v1/resources/monitor/reset"),
        ("POST", "/v1/admin/drain"),
    ] {
        let mut headers = rebound("evil.example");
        headers.push(json.clone());
        let (status, _, _, body) =
            call_async(method, format!("{base}{path}"), headers, Some("{}".into())).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    assert!(
        !node.flow.is_draining(),
        "a rebinding page drained the node"
    );
    // A probe may use any name.
    let (status, ..) = call_async(
        "GET",
        format!("{base}/healthz"),
        rebound("evil.example"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // The names the node serves: its addresses, loopback names, --public-name.
    for host in [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "exo.example",
        "EXO.example.",
    ] {
        let (status, _, _, body) = call_async(
            "GET",
            format!("{base}/v1/resources/report"),
            vec![("host", format!("{host}:{port}"))],
            None,
        )
        .await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // An admin POST without a JSON body type (what a form or a no-cors fetch sends) is
    // refused; with one it is served.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let headers = content_type
            .map(|c| vec![("content-type", c.to_string())])
            .unwrap_or_default();
        let (status, _, _, body) = call_async(
            "POST",
            format!("{base}/v1/resources/monitor/reset"),
            headers,
            Some(String::new()),
        )
        .await;
        assert_eq!(status, 415, "{content_type:?}: {body}");
    }
    let (status, _, _, body) = call_async(
        "POST",
        format!("{base}/v1/resources/monitor/reset"),
        vec![json],
        Some("{}".into()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    node.shutdown().await.unwrap();
}

/// A reverse proxy on the same host makes every request come from loopback: a request
/// that carries forwarding headers is not admin by loopback (the proxy needs --admin-key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_loopback_is_not_admin() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(dir.path(), ApiConfig::default()).await;
    let report = format!("http://127.0.0.1:{}/v1/resources/report", node.api_port());
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-real-ip", "203.0.113.9"),
        ("x-forwarded-host", "exo.example"),
    ] {
        let (status, _, _, body) =
            call_async("GET", report.clone(), vec![(name, value.to_string())], None).await;
        assert_eq!(status, 403, "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--admin-key"),
            "{body}"
        );
    }
    // Not admin, but the rest of the API is served through a proxy as before.
    let (status, ..) = call_async(
        "GET",
        format!("http://127.0.0.1:{}/v1/models", node.api_port()),
        vec![("x-forwarded-for", "203.0.113.9".to_string())],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, ..) = call_async("GET", report, vec![], None).await;
    assert_eq!(status, 200);
    node.shutdown().await.unwrap();

    // With an admin key, the key decides, proxy or not.
    let other = tempfile::tempdir().unwrap();
    let keyed = lone_node(
        other.path(),
        ApiConfig {
            admin_keys: vec!["adm".into()],
            ..ApiConfig::default()
        },
    )
    .await;
    let (status, _, _, body) = call_async(
        "GET",
        format!("http://127.0.0.1:{}/v1/resources/report", keyed.api_port()),
        vec![
            ("x-forwarded-for", "203.0.113.9".to_string()),
            ("authorization", "Bearer adm".to_string()),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    keyed.shutdown().await.unwrap();
}
