//! The transition table of DESIGN.md §1, accepted and refused.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use exo::resource::{ResourceError, ResourceState::*};

use crate::probe::{Probe, WAIT, probe};

#[tokio::test]
async fn initialize_goes_uninitialized_initializing_ready() {
    let (r, knobs) = probe("t1", Probe::new());
    assert_eq!(r.state(), Uninitialized);
    let mut events = r.events();
    r.initialize().await.unwrap();
    assert_eq!(r.state(), Ready);
    assert_eq!(events.recv().await.unwrap().to, Initializing);
    assert_eq!(events.recv().await.unwrap().to, Ready);
    let history: Vec<_> = r.history().iter().map(|c| (c.from, c.to)).collect();
    assert_eq!(
        history,
        vec![(Uninitialized, Initializing), (Initializing, Ready)]
    );
    assert_eq!(r.stats().initialize_attempts, 1);
    assert!(r.stats().last_initialize_duration.is_some());
    // Initialize on a Ready resource does nothing.
    r.initialize().await.unwrap();
    assert_eq!(knobs.init_calls.load(SeqCst), 1);
}

#[tokio::test]
async fn failed_initialize_goes_to_error_and_a_retry_recovers() {
    let (r, knobs) = probe("t2", Probe::new());
    knobs.fail_init.store(true, SeqCst);
    let error = r.initialize().await.unwrap_err();
    assert!(
        matches!(error, ResourceError::InitializeFailed { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("t2"), "{error}");
    assert!(error.to_string().contains("told to fail"), "{error}");
    assert_eq!(r.state(), Error);
    assert_eq!(r.stats().initialize_failures, 1);
    assert!(r.last_error().unwrap().contains("told to fail"));
    assert_eq!(
        knobs.cleanup_calls.load(SeqCst),
        1,
        "the failed attempt released what it held"
    );

    knobs.fail_init.store(false, SeqCst);
    r.ensure_ready().await.unwrap();
    assert_eq!(r.state(), Ready);
    let history: Vec<_> = r.history().iter().map(|c| c.to).collect();
    assert_eq!(history, vec![Initializing, Error, Initializing, Ready]);
}

#[tokio::test]
async fn ensure_ready_initializes_an_uninitialized_resource() {
    let (r, knobs) = probe("t3", Probe::new());
    r.ensure_ready().await.unwrap();
    assert_eq!(knobs.init_calls.load(SeqCst), 1);
    assert_eq!(r.state(), Ready);
    assert_eq!(r.stats().ready_calls, 1);
}

#[tokio::test]
async fn cleanup_goes_through_closing_to_closed_and_is_idempotent() {
    let (r, knobs) = probe("t4", Probe::new());
    r.initialize().await.unwrap();
    let mut events = r.events();
    r.cleanup().await.unwrap();
    assert_eq!(events.recv().await.unwrap().to, Closing);
    assert_eq!(events.recv().await.unwrap().to, Closed);
    assert_eq!(r.state(), Closed);
    r.cleanup().await.unwrap();
    r.cleanup().await.unwrap();
    assert_eq!(
        knobs.cleanup_calls.load(SeqCst),
        1,
        "cleanup of a Closed resource does nothing"
    );
    assert_eq!(r.stats().cleanups, 1);
}

#[tokio::test]
async fn concurrent_cleanups_clean_up_once() {
    let (r, knobs) = probe("t4b", Probe::new());
    r.initialize().await.unwrap();
    let (a, b) = tokio::join!(r.cleanup(), r.cleanup());
    a.unwrap();
    b.unwrap();
    assert_eq!(knobs.cleanup_calls.load(SeqCst), 1);
    assert_eq!(r.state(), Closed);
}

#[tokio::test]
async fn cleanup_of_an_uninitialized_resource_closes_it() {
    let (r, _) = probe("t5", Probe::new());
    r.cleanup().await.unwrap();
    assert_eq!(r.state(), Closed);
}

#[tokio::test]
async fn cleanup_runs_after_a_failed_initialize_and_records_its_own_errors() {
    let (r, knobs) = probe("t6", Probe::new());
    knobs.fail_init.store(true, SeqCst);
    knobs.fail_cleanup.store(true, SeqCst);
    r.initialize().await.unwrap_err();
    assert_eq!(r.state(), Error);
    let error = r.cleanup().await.unwrap_err();
    assert!(
        matches!(error, ResourceError::CleanupFailed { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("t6"), "{error}");
    assert_eq!(r.state(), Closed, "a failed cleanup still ends Closed");
    assert!(r.last_error().unwrap().contains("cleanup was told to fail"));
    assert!(r.stats().cleanup_failures >= 1);
}

#[tokio::test]
async fn ensure_ready_on_a_closed_resource_names_the_resource_and_its_state() {
    let (r, _) = probe("engine-under-test", Probe::new());
    r.initialize().await.unwrap();
    r.cleanup().await.unwrap();
    let error = r
        .ensure_ready()
        .await
        .err()
        .expect("a Closed resource must refuse");
    match &error {
        ResourceError::Unavailable { id, state, .. } => {
            assert_eq!(id, "engine-under-test");
            assert_eq!(*state, Closed);
        }
        other => panic!("unexpected error {other}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("engine-under-test") && text.contains("closed"),
        "{text}"
    );
    assert_eq!(r.stats().failed_ready_calls, 1);
}

#[tokio::test]
async fn ensure_ready_while_closing_is_refused() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (r, _) = probe(
        "t7b",
        Probe {
            cleanup_gate: Some(gate.clone()),
            ..Probe::new()
        },
    );
    r.initialize().await.unwrap();
    let cleanup = tokio::spawn({
        let r = r.clone();
        async move { r.cleanup().await }
    });
    r.wait_for(WAIT, |s| s == Closing).await.unwrap();
    let error = r.ensure_ready().await.map(|_| ()).unwrap_err();
    assert!(
        matches!(error, ResourceError::Unavailable { state: Closing, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("t7b"), "{error}");
    gate.add_permits(1);
    cleanup.await.unwrap().unwrap();
    assert_eq!(r.state(), Closed);
}

#[tokio::test]
async fn initialize_on_a_closed_resource_is_refused() {
    let (r, knobs) = probe("t8", Probe::new());
    r.cleanup().await.unwrap();
    let error = r.initialize().await.unwrap_err();
    assert!(
        matches!(error, ResourceError::Unavailable { state: Closed, .. }),
        "{error}"
    );
    assert_eq!(knobs.init_calls.load(SeqCst), 0);
}

#[tokio::test]
async fn health_check_of_an_uninitialized_resource_is_refused() {
    let (r, _) = probe("t9", Probe::new());
    let report = r.check_health().await;
    assert!(!report.checked && !report.healthy);
    assert_eq!(report.state, Uninitialized);
    assert_eq!(r.state(), Uninitialized);
    assert_eq!(r.stats().health_checks, 0);
}

#[tokio::test]
async fn reconnect_is_refused_before_initialize_and_unsupported_without_a_connection() {
    let (r, _) = probe("t10", Probe::new());
    assert!(matches!(
        r.reconnect().await.unwrap_err(),
        ResourceError::Unavailable {
            state: Uninitialized,
            ..
        }
    ));
    r.initialize().await.unwrap();
    assert!(matches!(
        r.reconnect().await.unwrap_err(),
        ResourceError::ReconnectUnsupported { .. }
    ));
    assert_eq!(r.state(), Ready);
}

#[tokio::test]
async fn reset_from_every_state_returns_to_ready_through_uninitialized() {
    // From Ready.
    let (r, knobs) = probe("t11", Probe::new());
    r.initialize().await.unwrap();
    r.reset().await.unwrap();
    assert_eq!(r.state(), Ready);
    let tail: Vec<_> = r.history().iter().rev().take(3).map(|c| c.to).collect();
    assert_eq!(tail, vec![Ready, Initializing, Uninitialized]);
    assert_eq!(knobs.init_calls.load(SeqCst), 2);
    assert_eq!(
        knobs.cleanup_calls.load(SeqCst),
        1,
        "reset released what the resource held"
    );
    assert_eq!(r.stats().resets, 1);

    // From Error.
    knobs.fail_init.store(true, SeqCst);
    r.reset().await.unwrap_err();
    assert_eq!(r.state(), Error);
    knobs.fail_init.store(false, SeqCst);
    r.reset().await.unwrap();
    assert_eq!(r.state(), Ready);

    // From Degraded.
    knobs.unhealthy.store(true, SeqCst);
    assert_eq!(r.check_health().await.state, Degraded);
    knobs.unhealthy.store(false, SeqCst);
    r.reset().await.unwrap();
    assert_eq!(r.state(), Ready);
    assert_eq!(r.stats().consecutive_health_failures, 0);

    // From Closed: reset brings a cleaned-up resource back.
    r.cleanup().await.unwrap();
    r.reset().await.unwrap();
    assert_eq!(r.state(), Ready);

    // From Uninitialized.
    let (fresh, _) = probe("t11b", Probe::new());
    fresh.reset().await.unwrap();
    assert_eq!(fresh.state(), Ready);
}

#[tokio::test]
async fn wait_for_reports_the_last_state_on_timeout() {
    let (r, _) = probe("t12", Probe::new());
    let error = r
        .wait_for(Duration::from_millis(20), |s| s == Ready)
        .await
        .unwrap_err();
    assert_eq!(error.last, Uninitialized);
    r.initialize().await.unwrap();
    assert_eq!(r.wait_for(WAIT, |s| s == Ready).await.unwrap(), Ready);
}

#[tokio::test]
async fn a_panicking_initialize_is_an_error_not_a_crash() {
    struct Panics;
    impl exo::resource::Resource for Panics {
        const KIND: &'static str = "panics";
        async fn initialize(&self) -> anyhow::Result<()> {
            panic!("boom")
        }
        async fn cleanup(&self) -> anyhow::Result<()> {
            Ok(())
        }
    }
    let r = exo::resource::Managed::new("t13", Panics);
    let error = r.initialize().await.unwrap_err();
    assert!(error.to_string().contains("boom"), "{error}");
    assert_eq!(r.state(), Error);
}
