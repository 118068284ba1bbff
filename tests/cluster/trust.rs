//! A keyed cluster: only key holders join, datagrams are authenticated (forged, stale and
//! replayed ones refused and counted), node-to-node gRPC refuses anyone without the key,
//! and plans naming a stranger are refused. All on loopback, in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use exo::app::Node;
use exo::discovery::{Announcement, PROTOCOL, PROTOCOL_VERSION, UdpDiscovery};
use exo::proto::pb;
use exo::proto::pb::node_client::NodeClient;
use exo::resource::Managed;
use exo::server::GrpcServer;
use exo::topology::DeviceCapabilities;
use exo::trust::{
    ClusterKey, ClusterTrust, DatagramSeal, NodeTls, TLS_SERVER_NAME, new_nonce, now_ms,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::e2e::{PROMPT, chat_body, generate_locally};
use crate::harness::{WAIT, free_udp_port, loopback_config, post_json, wait_for_peers};

/// A node on loopback discovery `port`, with `key` (None: open).
async fn start(dir: &std::path::Path, name: &str, port: u16, key: Option<&ClusterKey>) -> Node {
    let mut config = loopback_config(dir, name, port);
    config.trust = key.map(|k| ClusterTrust::new(k.clone()).unwrap());
    Node::start(config).await.unwrap()
}

fn discovery(node: &Node) -> Arc<Managed<UdpDiscovery>> {
    node.group.get("discovery").unwrap()
}

async fn discovery_stats(node: &Node) -> Arc<exo::discovery::DatagramStats> {
    discovery(node)
        .ensure_ready()
        .await
        .unwrap()
        .stats()
        .clone()
}

async fn grpc_address(node: &Node) -> SocketAddr {
    let server: Arc<Managed<GrpcServer>> = node.grpc.clone();
    server.ensure_ready().await.unwrap().local_addr().unwrap()
}

/// Waits until `node`'s discovery counts at least `n` datagrams by `count`.
async fn wait_for_count(
    node: &Node,
    n: u64,
    count: impl Fn(&exo::discovery::DatagramStats) -> u64,
) {
    let discovery = discovery(node);
    let stats = discovery.ensure_ready().await.unwrap().stats().clone();
    let mut handled = stats.subscribe();
    tokio::time::timeout(WAIT, handled.wait_for(|_| count(&stats) >= n))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "count stayed at {} < {n}: {}",
                count(&stats),
                stats.to_json()
            )
        })
        .unwrap();
}

/// An announcement a stranger would send: huge memory, to be chosen as shard 0.
fn forged(node_id: &str) -> Announcement {
    Announcement {
        protocol: PROTOCOL.into(),
        version: PROTOCOL_VERSION,
        node_id: node_id.into(),
        grpc_port: 1,
        model_id: "smollm2-135m".into(),
        interface_priority: 3,
        capabilities: DeviceCapabilities {
            memory_bytes: 1 << 50,
            available_memory_bytes: 1 << 50,
            ..DeviceCapabilities::default()
        },
        departing: false,
        draining: false,
        sent_at_ms: now_ms(),
        nonce: new_nonce(),
        // What a node on loopback names as its address.
        sender_addresses: vec![std::net::IpAddr::from([127, 0, 0, 1])],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_key_holders_join_and_forged_stale_and_replayed_datagrams_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let key = ClusterKey::generate();
    let k1 = start(dir.path(), "k1", port, Some(&key)).await;
    let k2 = start(dir.path(), "k2", port, Some(&key)).await;
    // A node with another key and an open node share the port: neither may join.
    let wrong = start(dir.path(), "wrong", port, Some(&ClusterKey::generate())).await;
    let open = start(dir.path(), "open", port, None).await;
    wait_for_peers(&k1, 1).await;
    wait_for_peers(&k2, 1).await;
    // Both outsiders have been heard (and refused) by now.
    wait_for_count(&k1, 2, |s| s.unauthenticated.load(Ordering::Relaxed)).await;

    // Forged: unsealed, sealed with the wrong key, and a forged goodbye of a real peer.
    let wrong_seal = DatagramSeal::new(&ClusterKey::generate());
    let right_seal = DatagramSeal::new(&key);
    let mut goodbye = forged("k2");
    goodbye.departing = true;
    let mut stale = forged("stale-visitor");
    stale.sent_at_ms = now_ms() - 120_000;
    // Sent to loopback's broadcast address: every node on the port hears it (a unicast
    // datagram would reach only one of the sockets sharing the port). The forgeries come
    // from an address of their own, so that the count of refusals from it is the
    // forger's alone (the outsiders' nodes are refused too, from 127.0.0.1).
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.set_broadcast(true).unwrap();
    let forger = tokio::net::UdpSocket::bind("127.0.0.9:0").await.unwrap();
    forger.set_broadcast(true).unwrap();
    let forger_ip = forger.local_addr().unwrap().ip();
    let everyone = ("127.255.255.255", port);
    let discovery = discovery(&k1);
    let stats = discovery.ensure_ready().await.unwrap().stats().clone();
    let forgeries = [
        forged("mallory").encode(),
        forged("mallory").encode_sealed(Some(&wrong_seal)),
        goodbye.encode(),
        goodbye.encode_sealed(Some(&wrong_seal)),
    ];
    for datagram in &forgeries {
        forger.send_to(datagram, everyone).await.unwrap();
    }
    for node in [&k1, &k2] {
        wait_for_count(node, forgeries.len() as u64, |s| s.refused_from(forger_ip)).await;
    }
    // A stale one, even with the right key (a recording played back later).
    socket
        .send_to(&stale.encode_sealed(Some(&right_seal)), everyone)
        .await
        .unwrap();
    wait_for_count(&k1, 1, |s| s.stale.load(Ordering::Relaxed)).await;
    // A replay: a datagram with the right key (what k2 would say of itself), sent twice.
    // The first copy is news; the second is refused. (scripts/netns-trust.sh replays
    // datagrams recorded off the wire.)
    let k2_port = grpc_address(&k2).await.port();
    let mut genuine = forged("k2");
    genuine.grpc_port = k2_port;
    genuine.interface_priority = 0;
    genuine.capabilities = k2.flow.capabilities().clone();
    let sealed = genuine.encode_sealed(Some(&right_seal));
    let replayed_before = stats.replayed.load(Ordering::Relaxed);
    socket.send_to(&sealed, everyone).await.unwrap();
    socket.send_to(&sealed, everyone).await.unwrap();
    wait_for_count(&k1, replayed_before + 1, |s| {
        s.replayed.load(Ordering::Relaxed)
    })
    .await;

    assert_only_each_other(&k1, &k2).await;
    // Every forgery reached both and was refused, and nothing else from the forger.
    for node in [&k1, &k2] {
        let stats = discovery_stats(node).await;
        assert_eq!(
            stats.refused_from(forger_ip),
            forgeries.len() as u64,
            "{}",
            stats.to_json()
        );
    }
    // The forged goodbye did not drop k2 (k1 handled it: counted above), and the
    // outsiders see no one either.
    assert!(k1.peers.handle("k2").is_some());
    assert!(wrong.peers.peers().is_empty(), "{:?}", wrong.peers.peers());
    // The open node takes on anyone who asks (mallory, unsealed) but cannot read the
    // keyed nodes' datagrams.
    let open_peers: Vec<String> = open.peers.peers().into_iter().map(|p| p.node_id).collect();
    assert!(
        !open_peers.iter().any(|id| id == "k1" || id == "k2"),
        "{open_peers:?}"
    );

    // The status says what the node is.
    let topology = topology_of(k1.api_port()).await;
    assert_eq!(topology["security"]["cluster"], "keyed", "{topology}");
    assert_eq!(topology["security"]["warning"], serde_json::Value::Null);
    let open_topology = topology_of(open.api_port()).await;
    assert_eq!(open_topology["security"]["cluster"], "open");
    assert!(
        open_topology["security"]["warning"]
            .as_str()
            .unwrap()
            .contains("OPEN")
    );

    for node in [k1, k2, wrong, open] {
        node.shutdown().await.unwrap();
    }
}

/// k1 and k2 list only each other, and plan over the two of them.
async fn assert_only_each_other(k1: &Node, k2: &Node) {
    for node in [k1, k2] {
        let listed: Vec<String> = node.peers.peers().into_iter().map(|p| p.node_id).collect();
        let other = if node.node_id() == "k1" { "k2" } else { "k1" };
        assert_eq!(
            listed,
            vec![other.to_string()],
            "{} lists {listed:?}",
            node.node_id()
        );
        let plan = node.flow.plan().await.unwrap();
        let ids: Vec<&str> = plan.entries.iter().map(|e| e.node_id.as_str()).collect();
        assert!(
            ids.len() == 2 && ids.contains(&"k1") && ids.contains(&"k2"),
            "{ids:?}"
        );
    }
}

/// A gRPC server over `node`'s flow that shows `tls`'s certificate (another cluster's).
async fn stranger_serving(node: &Node, tls: &NodeTls) -> (Arc<Managed<GrpcServer>>, SocketAddr) {
    let server = Managed::new(
        "grpc_server",
        GrpcServer::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            node.flow.clone(),
            Arc::new(std::sync::atomic::AtomicU16::new(0)),
        )
        .with_tls(Some(tls.server_config())),
    );
    let at = server.ensure_ready().await.unwrap().local_addr().unwrap();
    (server, at)
}

/// A node's `/v1/topology`.
async fn topology_of(api_port: u16) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{api_port}/v1/topology");
    tokio::task::spawn_blocking(move || ureq::get(&url).call().unwrap().into_json().unwrap())
        .await
        .unwrap()
}

/// Calls HealthCheck through `endpoint`; Err when the connection or the call fails.
async fn health_check(endpoint: Endpoint) -> Result<String, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let reply = NodeClient::new(channel)
        .health_check(pb::HealthCheckRequest {})
        .await
        .map_err(|s| format!("call: {s:?}"))?;
    Ok(reply.into_inner().node_id)
}

fn endpoint(address: SocketAddr, tls: Option<ClientTlsConfig>) -> Endpoint {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5));
    match tls {
        Some(tls) => endpoint.tls_config(tls).unwrap(),
        None => endpoint,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_ring_answers_like_one_node_and_refuses_grpc_from_anyone_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let key = ClusterKey::generate();
    let mut nodes = Vec::new();
    for name in ["k1", "k2", "k3"] {
        nodes.push(start(dir.path(), name, port, Some(&key)).await);
    }
    for node in &nodes {
        wait_for_peers(node, 2).await;
    }
    let address = grpc_address(&nodes[0]).await;

    // A member (same key) gets through: the refusals below are about the key, not a fault.
    let member = NodeTls::new(&key).unwrap();
    assert_eq!(
        health_check(endpoint(address, Some(member.client_config()))).await,
        Ok("k1".to_string())
    );
    // No TLS at all; TLS with another cluster's key; TLS that trusts the right CA but has
    // no certificate to show.
    let stranger = NodeTls::new(&ClusterKey::generate()).unwrap();
    let no_certificate = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(member.ca_pem()))
        .domain_name(TLS_SERVER_NAME);
    for (what, tls) in [
        ("plain", None),
        ("wrong key", Some(stranger.client_config())),
        ("no client certificate", Some(no_certificate)),
    ] {
        let outcome = health_check(endpoint(address, tls)).await;
        assert!(outcome.is_err(), "{what}: {outcome:?}");
    }
    // The failed handshakes are counted (a client may try a refused one more than once).
    let gate = nodes[0]
        .grpc
        .ensure_ready()
        .await
        .unwrap()
        .connection_gate();
    tokio::time::timeout(crate::harness::WAIT, async {
        while gate.stats().tls_failed < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{:?}", gate.stats()));
    // The stranger cannot pass for a node either: a member refuses its certificate.
    let (_server_side, stranger_server) = stranger_serving(&nodes[1], &stranger).await;
    let outcome = health_check(endpoint(stranger_server, Some(member.client_config()))).await;
    assert!(
        outcome.is_err(),
        "a member accepted a stranger's server: {outcome:?}"
    );

    // A member's plan that names a stranger is refused and counted; one that names only
    // members is taken.
    let client = endpoint(address, Some(member.client_config()))
        .connect()
        .await
        .unwrap();
    let mut client = NodeClient::new(client);
    let hidden = exo::proto::encode_tensor(
        &candle_core::Tensor::zeros(
            (1, 1, 576),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap(),
    )
    .unwrap();
    let item = |nodes: &[&str]| pb::StepItem {
        context: Some(crate::tensors::context("probe", nodes, 1)),
        input: Some(pb::step_item::Input::Tensor(hidden.clone())),
    };
    let errors = client
        .send_steps(pb::StepBatch {
            items: vec![item(&["mallory", "k1"])],
        })
        .await
        .unwrap()
        .into_inner()
        .errors;
    assert!(
        errors[0].contains("has not proven the cluster key"),
        "{errors:?}"
    );
    assert_eq!(nodes[0].flow.stats().plans_refused, 1);

    // And the ring answers exactly as one process does.
    let expected = tokio::task::spawn_blocking(|| generate_locally(PROMPT, 12))
        .await
        .unwrap();
    let url = format!(
        "http://127.0.0.1:{}/v1/chat/completions",
        nodes[0].api_port()
    );
    let (status, body) =
        tokio::task::spawn_blocking(move || post_json(&url, &chat_body(PROMPT, 12, false)))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        expected.as_str(),
        "{body}"
    );
    let plan = nodes[0].flow.plan().await.unwrap();
    assert_eq!(plan.entries.len(), 3);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// A host that holds a member's genuine datagram (recorded on another link, or sent
/// before the member's own copy arrives) relays it from its own address: the member's
/// address must not move to the relay's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_datagram_relayed_from_another_address_does_not_move_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let key = ClusterKey::generate();
    let k1 = start(dir.path(), "k1", port, Some(&key)).await;
    let k2 = start(dir.path(), "k2", port, Some(&key)).await;
    wait_for_peers(&k1, 1).await;
    let address_of_k2 = |node: &Node| {
        node.peers
            .peers()
            .into_iter()
            .find(|p| p.node_id == "k2")
            .map(|p| p.address)
    };
    let before = address_of_k2(&k1).unwrap();
    assert!(before.starts_with("127.0.0.1:"), "{before}");

    // What k2 says of itself, sealed with the key, fresh: sent from 127.0.0.9, and
    // claiming a better link than loopback (a node moves to a better-ranked address).
    let mut genuine = forged("k2");
    genuine.grpc_port = grpc_address(&k2).await.port();
    genuine.capabilities = k2.flow.capabilities().clone();
    let relay = tokio::net::UdpSocket::bind("127.0.0.9:0").await.unwrap();
    relay.set_broadcast(true).unwrap();
    relay
        .send_to(
            &genuine.encode_sealed(Some(&DatagramSeal::new(&key))),
            ("127.255.255.255", port),
        )
        .await
        .unwrap();
    let stats = discovery(&k1).ensure_ready().await.unwrap().stats().clone();
    let mut handled = stats.subscribe();
    let refused = |stats: &exo::discovery::DatagramStats| {
        stats.to_json()["refused"]["wrong_sender"]
            .as_u64()
            .unwrap_or(0)
    };
    tokio::time::timeout(
        WAIT,
        handled.wait_for(|_| refused(&stats) >= 1 || address_of_k2(&k1) != Some(before.clone())),
    )
    .await
    .expect("k1 never handled the relayed datagram")
    .unwrap();
    assert_eq!(address_of_k2(&k1), Some(before), "k2 moved to the relay");
    assert_eq!(refused(&stats), 1, "{}", stats.to_json());
    for node in [k1, k2] {
        node.shutdown().await.unwrap();
    }
}
