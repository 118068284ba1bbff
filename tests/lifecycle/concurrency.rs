//! Single-flight initialize, its timeout, and cleanup while it is in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use exo::resource::{Managed, ResourceError, ResourceState::*};
use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::probe::{Probe, WAIT, probe, quick_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_callers_share_one_initialize() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe("shared", Probe::gated(gate.clone()));
    let joined = Arc::new(Semaphore::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (r, joined) = (r.clone(), joined.clone());
            tokio::spawn(async move {
                let mut call = std::pin::pin!(r.ensure_ready());
                // The first poll starts the attempt or joins the one in flight.
                let first = futures::poll!(call.as_mut());
                joined.add_permits(1);
                match first {
                    std::task::Poll::Ready(result) => result.map(|_| ()),
                    std::task::Poll::Pending => call.await.map(|_| ()),
                }
            })
        })
        .collect();
    // Every caller is waiting on the one attempt before it may finish.
    joined.acquire_many(100).await.unwrap().forget();
    gate.add_permits(1);
    for outcome in join_all(callers).await {
        outcome.unwrap().unwrap();
    }
    assert_eq!(knobs.init_calls.load(SeqCst), 1);
    assert_eq!(r.stats().initialize_attempts, 1);
    assert_eq!(r.stats().ready_calls, 100);
    assert_eq!(r.state(), Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_callers_all_get_the_same_error() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe("shared-fail", Probe::gated(gate.clone()));
    knobs.fail_init.store(true, SeqCst);
    let joined = Arc::new(Semaphore::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (r, joined) = (r.clone(), joined.clone());
            tokio::spawn(async move {
                let mut call = std::pin::pin!(r.initialize());
                let first = futures::poll!(call.as_mut());
                joined.add_permits(1);
                match first {
                    std::task::Poll::Ready(result) => result,
                    std::task::Poll::Pending => call.await,
                }
            })
        })
        .collect();
    // All hundred are in before the attempt may fail (a caller arriving after the failure
    // would rightly start a second attempt).
    joined.acquire_many(100).await.unwrap().forget();
    gate.add_permits(1);
    let errors: Vec<ResourceError> = join_all(callers)
        .await
        .into_iter()
        .map(|outcome| outcome.unwrap().unwrap_err())
        .collect();
    assert_eq!(knobs.init_calls.load(SeqCst), 1);
    assert!(
        errors.iter().all(|e| *e == errors[0]),
        "all callers share one outcome"
    );
    assert!(matches!(errors[0], ResourceError::InitializeFailed { .. }));
    assert_eq!(r.state(), Error);
}

#[tokio::test]
async fn initialize_past_its_timeout_is_an_error_naming_it_and_a_later_call_succeeds() {
    let gate = Arc::new(Semaphore::new(0));
    let probe_ = Probe::gated(gate.clone());
    let knobs = probe_.knobs();
    let mut config = quick_config();
    config.initialize_timeout = Duration::from_millis(150);
    let r = Managed::builder("slow", probe_).config(config).build();

    let error = r.ensure_ready().await.map(|_| ()).unwrap_err();
    assert!(
        matches!(error, ResourceError::InitializeTimeout { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(text.contains("150ms") && text.contains("slow"), "{text}");
    assert_eq!(r.state(), Error);
    assert_eq!(
        knobs.inits_in_flight.load(SeqCst),
        0,
        "the timed-out attempt was dropped, not left running"
    );

    // The cause goes away: the next ensure_ready retries and succeeds.
    gate.add_permits(1);
    r.ensure_ready().await.unwrap();
    assert_eq!(r.state(), Ready);
    assert_eq!(knobs.init_calls.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_while_initialize_is_in_flight_leaves_no_task_and_ends_closed() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe("interrupted", Probe::gated(gate));
    let waiter = tokio::spawn({
        let r = r.clone();
        async move { r.ensure_ready().await.map(|_| ()) }
    });
    r.wait_for(WAIT, |s| s == Initializing).await.unwrap();
    // Wait until the inner initialize is really running (parked on its gate).
    tokio::time::timeout(WAIT, async {
        while knobs.inits_in_flight.load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();

    r.cleanup().await.unwrap();
    assert_eq!(r.state(), Closed);
    assert_eq!(
        knobs.inits_in_flight.load(SeqCst),
        0,
        "the initialize task is gone"
    );
    assert_eq!(knobs.cleanup_calls.load(SeqCst), 1);
    let error = waiter.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            ResourceError::Cancelled { .. }
                | ResourceError::Unavailable {
                    state: Closing | Closed,
                    ..
                }
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_while_initialize_is_in_flight_restarts_it() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, knobs) = probe("restarted", Probe::gated(gate.clone()));
    let first = tokio::spawn({
        let r = r.clone();
        async move { r.initialize().await }
    });
    r.wait_for(WAIT, |s| s == Initializing).await.unwrap();
    let reset = tokio::spawn({
        let r = r.clone();
        async move { r.reset().await }
    });
    // The first attempt is abandoned; the reset's attempt waits on the gate.
    assert!(matches!(
        first.await.unwrap(),
        Err(ResourceError::Cancelled { .. })
    ));
    gate.add_permits(1);
    reset.await.unwrap().unwrap();
    assert_eq!(r.state(), Ready);
    assert_eq!(knobs.inits_in_flight.load(SeqCst), 0);
}
