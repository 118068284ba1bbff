//! Caps where outside input arrives: the peer table's size, a plan's entries, a stop
//! string's length.

use exo::discovery::{PeerTable, PeerTableConfig, Sighting};
use exo::proto::pb;
use exo::resource::ResourceRegistry;
use exo::topology::{MAX_PLAN_ENTRIES, Partition};

#[tokio::test]
async fn a_full_peer_table_refuses_newcomers_and_counts_them() {
    let table = PeerTable::new(
        "me",
        PeerTableConfig {
            max_peers: 2,
            ..PeerTableConfig::default()
        },
        ResourceRegistry::new(),
    );
    for i in 0..5 {
        table.observe(Sighting {
            node_id: format!("p{i}"),
            address: "127.0.0.1:1".into(),
            priority: 0,
            model_id: "m".into(),
            capabilities: None,
        });
    }
    let ids: Vec<String> = table.peers().into_iter().map(|p| p.node_id).collect();
    assert_eq!(ids, vec!["p0", "p1"]);
    assert_eq!(table.refused_full(), 3);
    table.clear().await;
}

#[tokio::test]
async fn an_open_table_that_keeps_to_loopback_takes_no_peer_from_elsewhere() {
    let table = PeerTable::new(
        "me",
        PeerTableConfig {
            loopback_only: true,
            ..PeerTableConfig::default()
        },
        ResourceRegistry::new(),
    );
    let sighting = |id: &str, address: &str| Sighting {
        node_id: id.into(),
        address: address.into(),
        priority: 0,
        model_id: "m".into(),
        capabilities: None,
    };
    // From an announcement or a peers file, and from a plan's address.
    table.observe(sighting("lan", "10.0.0.5:50051"));
    table.observe(sighting("v6", "[fe80::1]:50051"));
    let Err(error) = table.adopt("planned", "192.168.1.9:50051", "m") else {
        panic!("a plan made the table dial off loopback");
    };
    assert!(error.contains("off loopback"), "{error}");
    assert_eq!(table.refused_off_loopback(), 3);
    // Peers on this host are taken on as before.
    table.observe(sighting("here", "127.0.0.1:50051"));
    assert!(table.adopt("also-here", "[::1]:50052", "m").is_ok());
    let ids: Vec<String> = table.peers().into_iter().map(|p| p.node_id).collect();
    assert_eq!(ids, vec!["also-here", "here"]);
    table.clear().await;
}

#[test]
fn a_plan_with_too_many_entries_is_refused_before_it_is_checked() {
    let entry = |i: usize| pb::PartitionEntry {
        node_id: format!("n{i}"),
        address: "127.0.0.1:1".into(),
        start_layer: i as u32,
        followers: Vec::new(),
        end_layer: i as u32 + 1,
    };
    let plan = |n: usize| pb::PartitionPlan {
        model_id: "m".into(),
        n_layers: n as u32,
        entries: (0..n).map(entry).collect(),
    };
    assert!(Partition::from_wire(&plan(MAX_PLAN_ENTRIES)).is_ok());
    let error = Partition::from_wire(&plan(MAX_PLAN_ENTRIES + 1)).unwrap_err();
    assert!(error.to_string().contains("at most 256"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_past_the_cap_gets_400() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::harness::loopback_config(dir.path(), "solo", 0);
    config.discovery = exo::app::DiscoveryMode::None;
    let node = exo::app::Node::start(config).await.unwrap();
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", node.api_port());
    let mut body = crate::e2e::chat_body("hi", 1, false);
    body["stop"] = serde_json::json!(["x".repeat(257)]);
    let (status, reply) =
        tokio::task::spawn_blocking(move || crate::harness::post_json(&url, &body))
            .await
            .unwrap();
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["param"], "stop", "{reply}");
    node.shutdown().await.unwrap();
}
