//! `with_connection`: retries transient errors with backoff, gives up with the last error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use exo::resource::ResourceState::*;
use futures::FutureExt;

use crate::probe::{Dropped, Probe, probe};

/// Time is paused: the backoff sleeps advance the clock instantly and exactly, so the
/// test can check the waits without spending them.
#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_with_backoff_and_reconnect() {
    let (r, knobs) = probe("c1", Probe::network());
    r.initialize().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let started = tokio::time::Instant::now();
    let value = r
        .with_connection("fetch", |_| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, SeqCst) + 1;
                if n < 3 {
                    Err(anyhow::Error::new(Dropped))
                } else {
                    Ok(n * 10)
                }
            }
            .boxed()
        })
        .await
        .unwrap();
    assert_eq!(value, 30);
    assert_eq!(calls.load(SeqCst), 3);
    assert_eq!(
        knobs.reconnect_calls.load(SeqCst),
        2,
        "a reconnect between attempts"
    );
    assert_eq!(r.stats().transient_errors, 2);
    // Backoff 10 ms then 20 ms (quick_config): at least their sum has passed.
    assert!(
        started.elapsed() >= Duration::from_millis(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.state(), Ready);
}

#[tokio::test(start_paused = true)]
async fn it_gives_up_after_the_limit_with_the_last_error() {
    let (r, _) = probe("c2", Probe::network());
    r.initialize().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let error = r
        .with_connection("fetch", |_| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, SeqCst) + 1;
                Err::<(), _>(anyhow::Error::new(Dropped).context(format!("attempt {n}")))
            }
            .boxed()
        })
        .await
        .unwrap_err();
    let limit = r.config().retry.max_attempts;
    assert_eq!(calls.load(SeqCst), limit);
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("attempt {limit}")),
        "the last error is kept: {text}"
    );
    assert!(
        text.contains(&format!("gave up after {limit} attempt(s)")),
        "{text}"
    );
    assert!(text.contains("c2"), "{text}");
    assert!(
        error.downcast_ref::<Dropped>().is_some(),
        "the cause can still be inspected"
    );
}

#[tokio::test]
async fn a_final_error_is_not_retried() {
    let (r, knobs) = probe("c3", Probe::network());
    r.initialize().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let error = r
        .with_connection("parse", |_| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, SeqCst);
                Err::<(), _>(anyhow::anyhow!("bad input"))
            }
            .boxed()
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(knobs.reconnect_calls.load(SeqCst), 0);
    assert!(format!("{error:#}").contains("bad input"));
    assert_eq!(
        r.state(),
        Ready,
        "a final error says nothing about the connection"
    );
}

#[tokio::test]
async fn with_connection_on_a_closed_resource_fails_at_once() {
    let (r, _) = probe("c4", Probe::network());
    r.cleanup().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let error = r
        .with_connection("fetch", |_| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, SeqCst);
                Ok(())
            }
            .boxed()
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(SeqCst), 0);
    assert!(error.to_string().contains("closed"), "{error}");
    assert_eq!(r.state(), Closed);
}
