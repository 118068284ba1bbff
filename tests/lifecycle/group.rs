//! `ResourceGroup`: concurrency within a level, dependency order, rollback, reverse cleanup.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exo::resource::{GroupError, Managed, ResourceGroup, ResourceState::*};
use tokio::sync::Barrier;

use crate::probe::{Probe, managed, probe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_one_level_initialize_concurrently() {
    // Both members wait at a barrier of two inside initialize: started one after the
    // other, the first would wait for ever (and hit the group's timeout below).
    let barrier = Arc::new(Barrier::new(2));
    let a = managed(
        "a",
        Probe {
            barrier: Some(barrier.clone()),
            ..Probe::new()
        },
    );
    let b = managed(
        "b",
        Probe {
            barrier: Some(barrier.clone()),
            ..Probe::new()
        },
    );
    let mut group = ResourceGroup::new("pair");
    group.add("a", a.clone(), &[]).unwrap();
    group.add("b", b.clone(), &[]).unwrap();
    tokio::time::timeout(Duration::from_secs(10), group.initialize())
        .await
        .expect("members of one level must start together")
        .unwrap();
    assert_eq!((a.state(), b.state()), (Ready, Ready));
}

#[tokio::test]
async fn dependencies_start_first_and_cleanup_runs_in_reverse_order() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let server = managed("server", Probe::logged("server", &log));
    let discovery = managed("discovery", Probe::logged("discovery", &log));
    let api = managed("api", Probe::logged("api", &log));
    let engine = managed("engine", Probe::logged("engine", &log));
    let mut group = ResourceGroup::new("node");
    group.add("engine", engine, &[]).unwrap();
    group.add("server", server, &["engine"]).unwrap();
    group.add("discovery", discovery, &["server"]).unwrap();
    group.add("api", api, &["engine"]).unwrap();
    group.initialize().await.unwrap();
    {
        let log = log.lock().unwrap();
        let at = |entry: &str| log.iter().position(|e| e == entry).unwrap();
        assert!(at("init engine") < at("init server"));
        assert!(at("init server") < at("init discovery"));
        assert!(at("init engine") < at("init api"));
    }
    log.lock().unwrap().clear();
    group.cleanup().await.unwrap();
    // Levels: [engine] [server, api] [discovery]; reverse: discovery, api, server, engine.
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "cleanup discovery",
            "cleanup api",
            "cleanup server",
            "cleanup engine"
        ]
    );
    for (_, member) in group.members() {
        assert_eq!(member.state(), Closed);
    }
}

#[tokio::test]
async fn a_failing_member_rolls_back_the_started_ones_and_is_named() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let first = managed("first", Probe::logged("first", &log));
    let second = managed("second", Probe::logged("second", &log));
    let (broken, knobs) = probe("broken", Probe::logged("broken", &log));
    knobs.fail_init.store(true, SeqCst);
    let never = managed("never", Probe::logged("never", &log));
    let mut group = ResourceGroup::new("node");
    group.add("first", first.clone(), &[]).unwrap();
    group.add("second", second.clone(), &["first"]).unwrap();
    group.add("broken", broken.clone(), &["first"]).unwrap();
    group.add("never", never.clone(), &["broken"]).unwrap();

    let error = group.initialize().await.unwrap_err();
    match &error {
        GroupError::MemberFailed { member, .. } => assert_eq!(member, "broken"),
        other => panic!("unexpected error {other}"),
    }
    assert!(error.to_string().contains("broken"), "{error}");
    for member in [&first, &second, &broken, &never] {
        assert_eq!(
            member.state(),
            Closed,
            "{} must be rolled back",
            member.id()
        );
    }
    assert!(!log.lock().unwrap().contains(&"init never".to_string()));
    let log = log.lock().unwrap();
    let at = |entry: &str| log.iter().position(|e| e == entry).unwrap();
    assert!(
        at("cleanup second") < at("cleanup first"),
        "rollback in reverse order: {log:?}"
    );
}

#[tokio::test]
async fn typed_get_and_bad_membership() {
    let mut group = ResourceGroup::new("g");
    let a = managed("a", Probe::new());
    group.add("a", a.clone(), &[]).unwrap();
    let got: Arc<Managed<Probe>> = group.get("a").unwrap();
    assert!(Arc::ptr_eq(&got, &a));
    assert!(group.get::<Probe>("missing").is_none());
    assert!(matches!(
        group.add("a", managed("a2", Probe::new()), &[]),
        Err(GroupError::DuplicateMember { .. })
    ));
    let error = group
        .add("b", managed("b", Probe::new()), &["nope"])
        .err()
        .unwrap();
    assert!(matches!(error, GroupError::UnknownDependency { .. }));
    assert!(error.to_string().contains("nope"));
}
