//! Discovery on loopback: nodes find each other, peers come and go with their servers,
//! bad datagrams are ignored and counted.

use std::time::{Duration, Instant};

use exo::discovery::{Announcement, DatagramError, PROTOCOL, PROTOCOL_VERSION, UdpDiscovery};
use exo::peer::GrpcPeerHandle;
use exo::resource::{Managed, ResourceState};
use exo::topology::DeviceCapabilities;
use futures::FutureExt;

use crate::harness::{WAIT, free_udp_port, loopback_config, start_nodes, wait_for_peers};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_loopback_find_each_other_and_any_one_reports_all_three() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &["alpha", "bravo", "charlie"]).await;
    for node in &nodes {
        wait_for_peers(node, 2).await;
    }
    // Topology from any one node, over gRPC, lists all three with capabilities.
    for node in &nodes {
        let handle = nodes
            .iter()
            .find(|other| other.node_id() != node.node_id())
            .and_then(|other| other.peers.handle(node.node_id()))
            .unwrap();
        let topology = handle
            .with_connection("CollectTopology", |peer| peer.collect_topology().boxed())
            .await
            .unwrap();
        let mut ids: Vec<&str> = topology.nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids[0], node.node_id(), "the answering node comes first");
        ids.sort();
        assert_eq!(ids, ["alpha", "bravo", "charlie"]);
        for info in &topology.nodes {
            let caps = info.capabilities.as_ref().expect("capabilities");
            assert!(
                caps.memory_bytes > 0 && caps.cpu_cores > 0 && !caps.cpu_model.is_empty(),
                "{info:?}"
            );
            assert_eq!(info.model_id, "smollm2-135m");
        }
    }
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_server_degrades_then_errors_its_handle_and_a_restart_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &["steady", "flaky"]).await;
    let (steady, flaky) = (&nodes[0], &nodes[1]);
    wait_for_peers(steady, 1).await;
    let handle = steady.peers.handle("flaky").unwrap();
    assert_eq!(handle.state(), ResourceState::Ready);
    let mut events = handle.events();

    flaky.grpc.cleanup().await.unwrap();
    // Degraded at the first failed check, Error after the threshold, asserted in order.
    let seen = tokio::time::timeout(WAIT, async {
        let mut seen = Vec::new();
        while let Ok(change) = events.recv().await {
            seen.push(change.to);
            if change.to == ResourceState::Error {
                break;
            }
        }
        seen
    })
    .await
    .expect("the handle must reach Error");
    assert_eq!(seen.first(), Some(&ResourceState::Degraded), "{seen:?}");
    assert_eq!(seen.last(), Some(&ResourceState::Error), "{seen:?}");
    let mut joined = steady.peers.subscribe();
    tokio::time::timeout(WAIT, joined.wait_for(|peers| peers.is_empty()))
        .await
        .expect("the peer must leave the topology")
        .unwrap();
    assert!(
        steady
            .flow
            .topology()
            .await
            .nodes
            .iter()
            .all(|n| n.node_id != "flaky" || n.link_state != "ready")
    );

    // Restarted: rediscovered, a Ready handle again.
    flaky.grpc.reset().await.unwrap();
    tokio::time::timeout(
        WAIT,
        joined.wait_for(|peers| peers.iter().any(|p| p.node_id == "flaky")),
    )
    .await
    .expect("the peer must be rediscovered")
    .unwrap();
    let handle = steady.peers.handle("flaky").unwrap();
    handle
        .wait_for(WAIT, |s| s == ResourceState::Ready)
        .await
        .unwrap();
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_leaves_is_dropped_within_three_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let stay = exo::app::Node::start(loopback_config(dir.path(), "stay", port))
        .await
        .unwrap();
    // The leaver has no departure message: its discovery socket and server just vanish,
    // as when a process is killed.
    let leave = exo::app::Node::start(loopback_config(dir.path(), "leave", port))
        .await
        .unwrap();
    wait_for_peers(&stay, 1).await;
    let started = Instant::now();
    // Its server stops, and with it its announcements (a node announces only a port
    // that serves), with no departure message: what a peer sees of a crash. (A real
    // SIGKILL is in the end-to-end and network-namespace tests.)
    leave.grpc.cleanup().await.unwrap();
    let mut joined = stay.peers.subscribe();
    tokio::time::timeout(
        Duration::from_secs(3),
        joined.wait_for(|peers| peers.is_empty()),
    )
    .await
    .expect("dropped within 3 s")
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    stay.shutdown().await.unwrap();
    leave.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_are_ignored_and_counted_and_discovery_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = exo::app::Node::start(loopback_config(dir.path(), "target", port))
        .await
        .unwrap();
    let discovery: std::sync::Arc<Managed<UdpDiscovery>> = node.group.get("discovery").unwrap();
    let stats = discovery.ensure_ready().await.unwrap().stats().clone();
    let mut handled = stats.subscribe();
    let before = *handled.borrow();

    let valid = Announcement {
        protocol: PROTOCOL.into(),
        version: PROTOCOL_VERSION,
        node_id: "visitor".into(),
        grpc_port: 1,
        model_id: "smollm2-135m".into(),
        interface_priority: 0,
        capabilities: DeviceCapabilities::default(),
        departing: false,
        draining: false,
        sent_at_ms: 0,
        nonce: String::new(),
        sender_addresses: Vec::new(),
    };
    let mut wrong_version = serde_json::to_value(&valid).unwrap();
    wrong_version["version"] = 99.into();
    let mut foreign = serde_json::to_value(&valid).unwrap();
    foreign["protocol"] = "someone-else".into();
    let mut empty_id = serde_json::to_value(&valid).unwrap();
    empty_id["node_id"] = "".into();
    let mut huge_length = serde_json::to_value(&valid).unwrap();
    huge_length["grpc_port"] = 10_000_000.into();
    let noise: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    let valid_bytes = valid.encode();
    let datagrams: Vec<Vec<u8>> = vec![
        noise,
        valid_bytes[..valid_bytes.len() / 2].to_vec(),
        vec![b'{'; 9000],
        vec![0u8; 60_000],
        serde_json::to_vec(&wrong_version).unwrap(),
        serde_json::to_vec(&foreign).unwrap(),
        serde_json::to_vec(&empty_id).unwrap(),
        serde_json::to_vec(&huge_length).unwrap(),
        Vec::new(),
    ];
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for datagram in &datagrams {
        socket.send_to(datagram, ("127.0.0.1", port)).await.unwrap();
    }
    // The node also hears its own announcements: wait for the bad ones to be counted.
    let _ = before;
    tokio::time::timeout(
        WAIT,
        handled.wait_for(|_| stats.ignored() >= datagrams.len() as u64),
    )
    .await
    .unwrap()
    .unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.too_large.load(Relaxed), 2);
    assert_eq!(stats.wrong_version.load(Relaxed), 1);
    assert_eq!(stats.foreign.load(Relaxed), 1);
    assert_eq!(stats.invalid.load(Relaxed), 1);
    assert_eq!(
        stats.malformed.load(Relaxed),
        4,
        "noise, truncated JSON, a huge port, an empty datagram"
    );
    assert!(
        node.peers.peers().is_empty(),
        "nothing joined from bad datagrams"
    );
    // The discovery task survived and still serves.
    assert_eq!(discovery.check_health().await.state, ResourceState::Ready);
    socket
        .send_to(&valid_bytes, ("127.0.0.1", port))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, handled.wait_for(|_| node.peers.peers().len() == 1))
        .await
        .expect("a valid announcement still registers a peer")
        .unwrap();
    node.shutdown().await.unwrap();
}

#[test]
fn announcement_decoding_never_panics_and_names_the_problem() {
    let mut state = 0x2545F4914F6CDD1Du64;
    for length in 0..2000usize {
        let bytes: Vec<u8> = (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = Announcement::decode(&bytes);
    }
    assert!(matches!(
        Announcement::decode(br#"{"protocol":"exo-rs","version":2}"#),
        Err(DatagramError::WrongVersion(2))
    ));
    assert!(matches!(
        Announcement::decode(br#"{"protocol":"x"}"#),
        Err(DatagramError::Foreign(_))
    ));
    assert!(matches!(
        Announcement::decode(b"\xff\xfe"),
        Err(DatagramError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_handle_to_an_address_that_is_another_node_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &["real"]).await;
    let address = format!(
        "127.0.0.1:{}",
        nodes[0]
            .grpc
            .ensure_ready()
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let impostor = Managed::new(
        "peer:ghost",
        GrpcPeerHandle::new("ghost", &address, Default::default()),
    );
    let error = impostor.initialize().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is node real, not the expected ghost"),
        "{error}"
    );
    nodes[0].shutdown().await.unwrap();
}
