//! Health checks: Ready ⇄ Degraded → Error, and recovery inside ensure_ready.

use std::sync::atomic::Ordering::SeqCst;

use exo::resource::{ResourceError, ResourceState::*};

use crate::probe::{Probe, fail_health_to_error, probe};

#[tokio::test]
async fn one_failure_degrades_a_pass_restores_n_failures_are_an_error() {
    let (r, knobs) = probe("h1", Probe::new());
    r.initialize().await.unwrap();

    knobs.unhealthy.store(true, SeqCst);
    let report = r.check_health().await;
    assert!(report.checked && !report.healthy);
    assert_eq!(report.state, Degraded);
    assert_eq!(r.state(), Degraded);

    knobs.unhealthy.store(false, SeqCst);
    assert_eq!(r.check_health().await.state, Ready);
    assert_eq!(r.stats().consecutive_health_failures, 0);

    knobs.unhealthy.store(true, SeqCst);
    let threshold = r.config().health_failure_threshold;
    let mut events = r.events();
    for n in 1..=threshold {
        let report = r.check_health().await;
        let expected = if n < threshold { Degraded } else { Error };
        assert_eq!(report.state, expected, "after {n} failure(s)");
        assert!(report.message.unwrap().contains("unhealthy"));
    }
    assert_eq!(events.recv().await.unwrap().to, Degraded);
    assert_eq!(events.recv().await.unwrap().to, Error);
    assert_eq!(r.stats().health_failures, u64::from(threshold) + 1);
    assert!(r.last_error().unwrap().contains("unhealthy"));
}

#[tokio::test]
async fn ensure_ready_recovers_a_degraded_resource_whose_health_passes_again() {
    let (r, knobs) = probe("h2", Probe::new());
    r.initialize().await.unwrap();
    knobs.unhealthy.store(true, SeqCst);
    r.check_health().await;
    assert_eq!(r.state(), Degraded);
    knobs.unhealthy.store(false, SeqCst);
    r.ensure_ready().await.unwrap();
    assert_eq!(r.state(), Ready);
}

#[tokio::test]
async fn a_degraded_resource_without_reconnect_that_stays_unhealthy_is_refused() {
    let (r, knobs) = probe("h3", Probe::new());
    r.initialize().await.unwrap();
    knobs.unhealthy.store(true, SeqCst);
    r.check_health().await;
    let error = r.ensure_ready().await.map(|_| ()).unwrap_err();
    assert!(
        matches!(
            error,
            ResourceError::Unavailable {
                state: Degraded,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("unhealthy"), "{error}");
}

#[tokio::test]
async fn a_degraded_network_resource_recovers_through_reconnect_inside_ensure_ready() {
    let (r, knobs) = probe("h4", Probe::network());
    r.initialize().await.unwrap();
    knobs.unhealthy.store(true, SeqCst);
    r.check_health().await;
    assert_eq!(r.state(), Degraded);

    // The health check inside ensure_ready still fails; reconnect heals the probe.
    let mut events = r.events();
    r.ensure_ready().await.unwrap();
    assert_eq!(r.state(), Ready);
    assert_eq!(knobs.reconnect_calls.load(SeqCst), 1);
    assert_eq!(
        knobs.init_calls.load(SeqCst),
        1,
        "recovered without re-initializing"
    );
    assert_eq!(r.stats().reconnects, 1);
    let change = events.recv().await.unwrap();
    assert_eq!((change.from, change.to), (Degraded, Ready));
    assert_eq!(change.reason.as_deref(), Some("reconnected"));
}

#[tokio::test]
async fn a_failed_reconnect_is_recorded_and_ensure_ready_fails() {
    let (r, knobs) = probe("h5", Probe::network());
    r.initialize().await.unwrap();
    knobs.unhealthy.store(true, SeqCst);
    knobs.reconnect_fails.store(true, SeqCst);
    r.check_health().await;
    let error = r.ensure_ready().await.map(|_| ()).unwrap_err();
    assert!(
        matches!(error, ResourceError::ReconnectFailed { .. }),
        "{error}"
    );
    assert_eq!(r.stats().reconnect_failures, 1);
    assert!(r.last_error().unwrap().contains("still unreachable"));
}

#[tokio::test]
async fn ensure_ready_re_initializes_a_resource_that_health_checks_took_to_error() {
    let (r, knobs) = probe("h6", Probe::new());
    r.initialize().await.unwrap();
    fail_health_to_error(&r, &knobs).await;
    knobs.unhealthy.store(false, SeqCst);
    r.ensure_ready().await.unwrap();
    assert_eq!(r.state(), Ready);
    assert_eq!(knobs.init_calls.load(SeqCst), 2);
    assert_eq!(
        knobs.cleanup_calls.load(SeqCst),
        1,
        "the broken instance was torn down first"
    );
}
