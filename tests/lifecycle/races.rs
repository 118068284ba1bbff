//! Lifecycle calls that overlap: a result about an instance that was replaced meanwhile
//! is ignored, recovery of a Degraded resource is single-flight, and a caller waiting on
//! an attempt that a reset replaces follows the reset.
//!
//! Each test holds one call in flight with a gate inside the probe (or by polling its
//! future once), lets the other call run to its end, and only then releases the first:
//! the interleaving is forced, not hoped for.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::task::Poll;

use exo::resource::{Managed, ResourceError, ResourceState::*};
use futures::future::join_all;
use futures::poll;
use tokio::sync::Semaphore;

use crate::probe::{Probe, WAIT, fail_health_to_error, probe};

#[tokio::test]
async fn a_reconnect_overtaken_by_a_re_initialize_does_not_make_the_torn_down_instance_ready() {
    let reconnect_gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe(
        "race-reconnect",
        Probe {
            reconnect_gate: Some(reconnect_gate.clone()),
            ..Probe::network()
        },
    );
    r.initialize().await.unwrap();
    fail_health_to_error(&r, &knobs).await;

    // A reconnect from Error starts and waits inside the probe.
    let mut reconnect = pin!(r.reconnect());
    assert!(poll!(reconnect.as_mut()).is_pending());
    assert_eq!(knobs.reconnect_calls.load(SeqCst), 1);

    // Meanwhile an initialize tears the instance down and fails to build a new one.
    knobs.fail_init.store(true, SeqCst);
    r.initialize().await.unwrap_err();
    assert_eq!(r.state(), Error);
    assert!(!knobs.live.load(SeqCst), "the instance is torn down");

    // The reconnect finishes: it worked on the instance that is gone.
    reconnect_gate.add_permits(1);
    let error = reconnect.await.unwrap_err();
    assert!(
        matches!(error, ResourceError::ReconnectSuperseded { .. }),
        "{error}"
    );
    assert_eq!(
        r.state(),
        Error,
        "a torn-down instance must not be called Ready"
    );
    assert_eq!(r.stats().reconnect_failures, 0, "overtaken, not failed");

    // The next caller builds a new instance instead of reaching the torn-down one.
    knobs.fail_init.store(false, SeqCst);
    r.ensure_ready().await.unwrap();
    assert!(knobs.live.load(SeqCst));
    assert_eq!(knobs.init_calls.load(SeqCst), 3);
}

#[tokio::test]
async fn a_health_check_of_the_instance_before_a_reset_does_not_degrade_the_new_one() {
    let health_gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe(
        "race-health",
        Probe {
            health_gate: Some(health_gate.clone()),
            ..Probe::new()
        },
    );
    r.initialize().await.unwrap();

    // A check of the first instance starts and waits inside the probe.
    let mut check = pin!(r.check_health());
    assert!(poll!(check.as_mut()).is_pending());
    assert_eq!(knobs.health_calls.load(SeqCst), 1);

    // A reset replaces the instance; the new one is Ready.
    r.reset().await.unwrap();
    assert_eq!(r.state(), Ready);

    // The old check ends: the instance it checked was torn down under it, so it fails.
    health_gate.add_permits(1);
    let report = check.await;
    assert!(report.checked && !report.healthy);
    assert_eq!(report.state, Ready);
    let message = report.message.unwrap_or_default();
    assert!(message.contains("re-initialized"), "{message}");
    assert_eq!(
        r.state(),
        Ready,
        "the new instance is judged by its own checks"
    );
    assert_eq!(r.stats().health_failures, 0);
    assert_eq!(r.stats().consecutive_health_failures, 0);

    // A check of the new instance counts as usual.
    assert!(r.check_health().await.healthy);
}

/// Polls `ensure_ready` of `n` spawned callers once each, so that every one of them has
/// started or joined the recovery before the test lets it go on.
async fn degraded_callers(
    r: &Arc<Managed<Probe>>,
    n: u32,
) -> Vec<tokio::task::JoinHandle<Result<(), ResourceError>>> {
    let joined = Arc::new(Semaphore::new(0));
    let callers = (0..n)
        .map(|_| {
            let (r, joined) = (r.clone(), joined.clone());
            tokio::spawn(async move {
                let mut call = pin!(r.ensure_ready());
                let first = poll!(call.as_mut());
                joined.add_permits(1);
                match first {
                    Poll::Ready(result) => result.map(|_| ()),
                    Poll::Pending => call.await.map(|_| ()),
                }
            })
        })
        .collect();
    joined.acquire_many(n).await.unwrap().forget();
    callers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_recovery_of_a_degraded_resource() {
    let health_gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe(
        "recover-once",
        Probe {
            health_gate: Some(health_gate.clone()),
            ..Probe::network()
        },
    );
    r.initialize().await.unwrap();
    knobs.unhealthy.store(true, SeqCst);
    r.report_problem("a call failed");
    assert_eq!(r.state(), Degraded);

    // Ten callers find it Degraded while the recovery's health check waits in the probe.
    let callers = degraded_callers(&r, 10).await;
    health_gate.add_permits(1);
    for outcome in join_all(callers).await {
        outcome.unwrap().unwrap();
    }
    assert_eq!(r.state(), Ready);
    assert_eq!(knobs.health_calls.load(SeqCst), 1, "one health check");
    assert_eq!(knobs.reconnect_calls.load(SeqCst), 1, "one reconnect");
    assert_eq!(r.stats().reconnects, 1);
    assert_eq!(knobs.init_calls.load(SeqCst), 1, "no re-initialize");
    assert_eq!(r.stats().ready_calls, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_the_failure_of_one_recovery() {
    let health_gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe(
        "recover-fails-once",
        Probe {
            health_gate: Some(health_gate.clone()),
            ..Probe::network()
        },
    );
    r.initialize().await.unwrap();
    knobs.unhealthy.store(true, SeqCst);
    knobs.reconnect_fails.store(true, SeqCst);
    r.report_problem("a call failed");

    let callers = degraded_callers(&r, 10).await;
    health_gate.add_permits(1);
    let errors: Vec<ResourceError> = join_all(callers)
        .await
        .into_iter()
        .map(|outcome| outcome.unwrap().unwrap_err())
        .collect();
    assert!(
        matches!(errors[0], ResourceError::ReconnectFailed { .. }),
        "{}",
        errors[0]
    );
    assert!(
        errors.iter().all(|e| *e == errors[0]),
        "all callers share one outcome"
    );
    assert_eq!(knobs.health_calls.load(SeqCst), 1);
    assert_eq!(knobs.reconnect_calls.load(SeqCst), 1);
    // One failed check, not ten: the callers did not push it past the threshold to Error.
    assert_eq!(r.stats().consecutive_health_failures, 1);
    assert_eq!(r.state(), Degraded);
}

#[tokio::test]
async fn ensure_ready_waiting_on_an_attempt_that_a_reset_replaces_joins_the_new_attempt() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe("follows-reset", Probe::gated(gate.clone()));

    // A caller starts the first attempt, which waits on the gate inside initialize.
    let mut ready = pin!(r.ensure_ready());
    assert!(poll!(ready.as_mut()).is_pending());
    tokio::time::timeout(WAIT, async {
        while knobs.inits_in_flight.load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();

    // A reset abandons that attempt and starts its own.
    let mut reset = pin!(r.reset());
    assert!(poll!(reset.as_mut()).is_pending());
    assert_eq!(r.state(), Initializing);

    gate.add_permits(1);
    let (ready, reset) = tokio::join!(ready, reset);
    ready.expect("the caller follows the reset instead of failing with Cancelled");
    reset.unwrap();
    assert_eq!(r.state(), Ready);
    assert_eq!(r.stats().initialize_attempts, 2);
    assert_eq!(knobs.inits_in_flight.load(SeqCst), 0);
}
