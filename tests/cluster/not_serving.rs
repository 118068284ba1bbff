//! A peer whose engine is down (its health answer says "not serving", as an origin's does
//! once its own engine is in Error) stays a joined peer over real gRPC: its handle
//! initializes, results still reach it, and the table records "not serving" (plans leave
//! it out) until its health answer says it serves again (issue 21 item 10).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU16;

use exo::discovery::{PeerTable, PeerTableConfig, Sighting};
use exo::proto::pb;
use exo::resource::{Managed, ResourceRegistry, ResourceState};
use exo::server::GrpcServer;
use futures::FutureExt;

use super::harness::WAIT;
use super::tensors::context;
use crate::support::stand_in::StandIn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_engine_is_down_stays_joined_and_takes_results() {
    let origin = Arc::new(StandIn::new("origin"));
    origin.set_serving(false);
    let server = Managed::new(
        "grpc_server",
        GrpcServer::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            origin.clone(),
            Arc::new(AtomicU16::new(0)),
        ),
    );
    let address = server.ensure_ready().await.unwrap().local_addr().unwrap();
    let table = PeerTable::new("shard", PeerTableConfig::default(), ResourceRegistry::new());
    let mut joined = table.subscribe();
    table.observe(Sighting {
        node_id: "origin".into(),
        address: address.to_string(),
        priority: 0,
        model_id: "m".into(),
        capabilities: None,
    });
    // It joins although it says it is not serving (a handle used to refuse it).
    tokio::time::timeout(WAIT, joined.wait_for(|peers| !peers.is_empty()))
        .await
        .expect("a peer that is not serving never joined")
        .unwrap();
    let peer = table.joined()[0].clone();
    assert_eq!(peer.state, ResourceState::Ready, "{peer:?}");
    assert!(!peer.serving, "{peer:?}");
    assert!(!table.serving("origin"));

    // Results of its requests still reach it.
    let result = pb::ResultItem {
        context: Some(context("r", &["origin", "shard"], 1)),
        node_id: "shard".into(),
        outcome: Some(pb::result_item::Outcome::Token(3)),
        logprobs: None,
    };
    let handle = table.handle("origin").unwrap();
    let refused = handle
        .with_connection("SendResults", |peer| {
            peer.send_results(pb::ResultBatch {
                items: vec![result.clone()],
            })
            .boxed()
        })
        .await
        .unwrap();
    assert_eq!(refused, vec![String::new()]);
    assert_eq!(origin.taken().1, 1);

    // Health checks keep it joined; once it serves again, the next one says so.
    table.maintain().await;
    assert!(table.joined()[0].is_joined() && !table.serving("origin"));
    origin.set_serving(true);
    table.maintain().await;
    let peer = table.joined()[0].clone();
    assert!(peer.serving, "{peer:?}");
    table.clear().await;
}
