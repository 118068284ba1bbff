//! Waiting on a state instead of sleeping.

use std::time::Duration;

use tokio::sync::watch;

use super::ResourceState;

/// A wait that ran out of time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for a state change (last state: {last})")]
pub struct WaitTimeout {
    pub timeout: Duration,
    pub last: ResourceState,
}

/// Waits until the watched state satisfies `pred` (checking the current state first).
pub async fn wait_for_state(
    mut rx: watch::Receiver<ResourceState>,
    timeout: Duration,
    mut pred: impl FnMut(ResourceState) -> bool,
) -> Result<ResourceState, WaitTimeout> {
    let waited = tokio::time::timeout(timeout, rx.wait_for(|state| pred(*state)))
        .await
        .map(|seen| seen.map(|state| *state));
    match waited {
        Ok(Ok(state)) => Ok(state),
        // The sender lives as long as the resource: a closed channel means it is gone.
        Ok(Err(_)) | Err(_) => Err(WaitTimeout {
            timeout,
            last: *rx.borrow(),
        }),
    }
}
