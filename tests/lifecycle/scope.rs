//! The scope helper always cleans up.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use exo::resource::{ResourceState::*, scoped};
use tokio::sync::Semaphore;

use crate::probe::{Probe, WAIT, probe};

#[tokio::test]
async fn the_scope_cleans_up_after_success_and_after_an_error() {
    let (r, knobs) = probe("s1", Probe::new());
    let value = scoped(&r, |r| async move {
        assert_eq!(r.state(), Ready);
        r.ensure_ready().await?;
        Ok(7)
    })
    .await
    .unwrap();
    assert_eq!(value, 7);
    assert_eq!(r.state(), Closed);

    let (r, knobs2) = probe("s2", Probe::new());
    let error = scoped(&r, |_| async move {
        Err::<(), _>(anyhow::anyhow!("body failed"))
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("body failed"));
    assert_eq!(r.state(), Closed);
    assert_eq!(knobs.cleanup_calls.load(SeqCst), 1);
    assert_eq!(knobs2.cleanup_calls.load(SeqCst), 1);
}

#[tokio::test]
async fn a_cancelled_scope_still_cleans_up() {
    let (r, knobs) = probe("s3", Probe::new());
    let entered = Arc::new(Semaphore::new(0));
    let task = tokio::spawn({
        let r = r.clone();
        let entered = entered.clone();
        async move {
            scoped(&r, |_| async move {
                entered.add_permits(1);
                std::future::pending::<()>().await;
                Ok(())
            })
            .await
        }
    });
    entered.acquire().await.unwrap().forget();
    task.abort();
    let _ = task.await;
    r.wait_for(WAIT, |s| s == Closed).await.unwrap();
    assert_eq!(knobs.cleanup_calls.load(SeqCst), 1);
}
