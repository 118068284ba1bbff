//! Manual discovery: peers named in a file, reloaded when it changes.

use std::net::SocketAddr;

use exo::app::{DiscoveryMode, Node};
use exo::discovery::ManualDiscovery;
use exo::resource::Managed;

use crate::harness::{WAIT, free_tcp_port, loopback_config, wait_for_peers};

fn write_peers(path: &std::path::Path, peers: &[(&str, u16)]) {
    let map: serde_json::Map<String, serde_json::Value> = peers
        .iter()
        .map(|(id, port)| (id.to_string(), format!("127.0.0.1:{port}").into()))
        .collect();
    // Write then rename, as an editor would, so the node never reads half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::json!({ "peers": map }).to_string()).unwrap();
    std::fs::rename(partial, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_named_in_peers_files_join_and_leave_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_tcp_port(), free_tcp_port());
    let (file_a, file_b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    write_peers(&file_a, &[("pf-b", port_b)]);
    write_peers(&file_b, &[("pf-a", port_a)]);
    let config = |name: &str, port: u16, file: &std::path::Path| {
        let mut config = loopback_config(dir.path(), name, 0);
        config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], port));
        config.discovery = DiscoveryMode::Manual(file.to_path_buf());
        config
    };
    let a = Node::start(config("pf-a", port_a, &file_a)).await.unwrap();
    let b = Node::start(config("pf-b", port_b, &file_b)).await.unwrap();
    wait_for_peers(&a, 1).await;
    wait_for_peers(&b, 1).await;
    // Capabilities are asked of the peer itself; then it takes part in plans.
    let mut joined = a.peers.subscribe();
    tokio::time::timeout(
        WAIT,
        joined.wait_for(|p| p.iter().all(|p| p.capabilities.is_some())),
    )
    .await
    .unwrap()
    .unwrap();
    let plan = a.flow.plan().await.unwrap();
    assert_eq!(plan.entries.len(), 2, "{plan:?}");

    // A broken file keeps the last good list.
    std::fs::write(&file_a, "{ this is not json").unwrap();
    let discovery: std::sync::Arc<Managed<ManualDiscovery>> = a.group.get("discovery").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while discovery.snapshot().info["last_error"].is_null() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken file was not noticed"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(a.peers.joined().len(), 1);

    // B removed from the file: it leaves A's view.
    write_peers(&file_a, &[]);
    tokio::time::timeout(WAIT, joined.wait_for(|p| p.is_empty()))
        .await
        .unwrap()
        .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_peers_file_stops_the_node_from_starting_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(dir.path(), "nofile", 0);
    config.discovery = DiscoveryMode::Manual(dir.path().join("missing.json"));
    let error = match Node::start(config).await {
        Ok(_) => panic!("a node without its peers file must not start"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("discovery") && error.contains("missing.json"),
        "{error}"
    );
}
