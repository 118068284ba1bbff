//! Idle connections do not exhaust a node: thousands of silent connections on its API and
//! gRPC ports are held up to the caps (per address and per server), refused past them
//! (an HTTP client is told 503), closed once silent past the timeout, and counted in
//! /metrics; meanwhile the ring answers as before. (scripts/conn-flood.sh measures the
//! answer's time against a quiet node; docs/BENCHMARKS.md.)

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::e2e::chat_body;
use crate::harness::{NodeProcess, WAIT, free_udp_port, get_json, post_json, wait_for_ring};
use crate::support::default_model;

/// The per-address cap of a node with default flags (`--max-connections-per-ip`).
const PER_IP: usize = 256;

/// Opens `count` connections to `to` from the loopback address `from` (a host of its
/// own, as far as the node can tell) and keeps them silent.
fn connect_from(from: Ipv4Addr, to: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket
                .bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
                .unwrap();
            socket.connect(&to.into()).unwrap();
            socket.into()
        })
        .collect()
}

/// 2,000 connections from eight addresses (under the per-address cap) and 300 from one
/// more (44 past it), each address from a thread of its own.
fn flood(to: SocketAddr) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let started = Instant::now();
    let held: Vec<_> = (2..10)
        .map(|host| {
            std::thread::spawn(move || connect_from(Ipv4Addr::new(127, 0, 0, host), to, 250))
        })
        .collect();
    let greedy = connect_from(Ipv4Addr::new(127, 0, 0, 10), to, 300);
    let held: Vec<TcpStream> = held.into_iter().flat_map(|t| t.join().unwrap()).collect();
    eprintln!(
        "{} connections to {to} in {:?}",
        held.len() + greedy.len(),
        started.elapsed()
    );
    (held, greedy)
}

/// The sample `name` with `labels` in `node`'s /metrics (None when absent).
pub fn metric(node: &NodeProcess, name: &str, labels: &str) -> Option<f64> {
    let text = ureq::get(&format!("{}/metrics", node.url()))
        .timeout(Duration::from_secs(10))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    let series = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `check` holds of `node`'s metrics.
fn wait_for_metrics(node: &NodeProcess, what: &str, check: impl Fn(&NodeProcess) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check(node) {
        assert!(
            Instant::now() < deadline,
            "node {}: {what} never held; /metrics:\n{}",
            node.name,
            ureq::get(&format!("{}/metrics", node.url()))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("connection") || l.contains("tls"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn grpc_address(node: &NodeProcess) -> SocketAddr {
    let resources = get_json(&format!("{}/v1/resources", node.url())).unwrap();
    resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "grpc_server")
        .and_then(|r| r["info"]["listen"].as_str())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn floods_of_idle_connections_are_capped_counted_and_closed_while_the_ring_answers() {
    // This process holds 4,600 sockets: past a soft limit of 1,024 (a common default).
    exo::listener::raise_fd_limit();
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let nodes: Vec<NodeProcess> = ["f1", "f2"]
        .iter()
        .map(|n| NodeProcess::start(dir.path(), n, port))
        .collect();
    for node in &nodes {
        wait_for_ring(node, 2);
    }
    let chat = format!("{}/v1/chat/completions", nodes[0].url());
    let (status, quiet) = post_json(&chat, &chat_body("Name three colours.", 12, false));
    assert_eq!(status, 200, "{quiet}");

    // 2,300 silent connections on f1's API port and as many on f2's gRPC port (the one
    // f1's steps cross).
    let api: SocketAddr = format!("127.0.0.1:{}", nodes[0].api_port).parse().unwrap();
    let (api_held, mut api_greedy) = flood(api);
    let (grpc_held, grpc_greedy) = flood(grpc_address(&nodes[1]));
    let held = api_held.len();
    let past_cap = (api_greedy.len() - PER_IP) as f64;
    wait_for_metrics(&nodes[0], "the API's flood admitted and refused", |n| {
        metric(
            n,
            "exo_connections_refused_total",
            r#"server="api",reason="ip_cap""#,
        ) == Some(past_cap)
            && metric(n, "exo_connections", r#"server="api""#)
                .is_some_and(|open| open >= (held + PER_IP) as f64)
    });
    wait_for_metrics(&nodes[1], "the gRPC flood admitted and refused", |n| {
        metric(
            n,
            "exo_connections_refused_total",
            r#"server="grpc",reason="ip_cap""#,
        ) == Some(past_cap)
            && metric(n, "exo_connections", r#"server="grpc""#)
                .is_some_and(|open| open >= (held + PER_IP) as f64)
    });
    // An HTTP client past the cap is told why before the connection closes.
    let told = api_greedy
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut reply = [0u8; 64];
            matches!(s.read(&mut reply), Ok(n) if reply[..n].starts_with(b"HTTP/1.1 503"))
        })
        .filter(|&told| told)
        .count();
    assert_eq!(told as f64, past_cap);

    // The ring answers through the flood, and answers the same.
    let (status, busy) = post_json(&chat, &chat_body("Name three colours.", 12, false));
    assert_eq!(status, 200, "{busy}");
    assert_eq!(
        busy["choices"][0]["message"]["content"],
        quiet["choices"][0]["message"]["content"]
    );
    for (node, server) in [(&nodes[0], "api"), (&nodes[1], "grpc")] {
        let open = metric(node, "exo_connections", &format!(r#"server="{server}""#));
        assert!(
            open.is_some_and(|open| open >= (held + PER_IP) as f64),
            "the {server} flood was no longer held when the answer came: {open:?}"
        );
    }

    // Silent past the timeout (10 s by default): every flooded connection is closed and
    // counted, and its place given back.
    let flooded = (held + PER_IP) as f64;
    wait_for_metrics(&nodes[0], "the API's silent connections closed", |n| {
        metric(n, "exo_connections_timed_out_total", r#"server="api""#)
            .is_some_and(|closed| closed >= flooded)
            && metric(n, "exo_connections", r#"server="api""#).is_some_and(|open| open < 8.0)
    });
    wait_for_metrics(
        &nodes[1],
        "the gRPC server's silent connections closed",
        |n| {
            metric(n, "exo_connections_timed_out_total", r#"server="grpc""#) == Some(flooded)
                && metric(n, "exo_connections", r#"server="grpc""#).is_some_and(|open| open < 8.0)
        },
    );
    drop((api_held, api_greedy, grpc_held, grpc_greedy));
}

/// With a cluster key, a connection to the gRPC port must finish its TLS handshake in
/// time: one that stays silent is closed and counted as timed out, one that is not TLS
/// (or has no certificate of the cluster) as failed. The API closes a silent connection
/// too. All counted in the servers' reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_failed_handshakes_are_closed_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::harness::loopback_config(dir.path(), "keyed", 0);
    config.discovery = exo::app::DiscoveryMode::None;
    config.trust = Some(exo::trust::ClusterTrust::new(exo::trust::ClusterKey::generate()).unwrap());
    config.connections.silent_timeout = Duration::from_millis(500);
    let node = exo::app::Node::start(config).await.unwrap();
    let grpc = node.grpc.ensure_ready().await.unwrap();
    let (grpc_address, gate) = (grpc.local_addr().unwrap(), grpc.connection_gate());
    let api_gate = node.api.ensure_ready().await.unwrap().connection_gate();

    // Silent on both ports; not TLS at all on the gRPC port.
    let mut silent = tokio::net::TcpStream::connect(grpc_address).await.unwrap();
    let mut idle_api = tokio::net::TcpStream::connect(("127.0.0.1", node.api_port()))
        .await
        .unwrap();
    let mut plain = tokio::net::TcpStream::connect(grpc_address).await.unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // Each is closed by the node (end of stream, or a TLS alert first).
    for stream in [&mut silent, &mut idle_api, &mut plain] {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("the node kept a silent or failed connection open")
            .ok();
    }
    let counted = |gate: &std::sync::Arc<exo::listener::ConnectionGate>| {
        let stats = gate.stats();
        (
            stats.tls_timed_out,
            stats.tls_failed,
            stats.timed_out,
            stats.open,
        )
    };
    tokio::time::timeout(WAIT, async {
        while counted(&gate) != (1, 1, 0, 0) || counted(&api_gate) != (0, 0, 1, 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("grpc {:?}, api {:?}", gate.stats(), api_gate.stats()));
    let report = exo::resource::Resource::info(grpc);
    assert_eq!(
        report["connections"]["counts"]["tls_timed_out"], 1,
        "{report}"
    );
    assert_eq!(report["connections"]["silent_timeout_ms"], 500, "{report}");
    node.shutdown().await.unwrap();
}
