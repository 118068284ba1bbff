//! Every call into a managed resource's inner resource: bounded in time, a panic turned
//! into an error.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::future::FutureExt;

/// How a call into the inner resource failed before it could return.
#[derive(Debug)]
pub(super) enum CallError {
    TimedOut(Duration),
    Panicked(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::TimedOut(timeout) => write!(f, "timed out after {timeout:?}"),
            CallError::Panicked(message) => f.write_str(message),
        }
    }
}

/// Runs a call into the inner resource with a time bound, a panic turned into an error: a
/// misbehaving resource must never hang or take down the state machine around it.
pub(super) async fn guarded<T>(
    timeout: Duration,
    call: impl Future<Output = T>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(call).catch_unwind()).await {
        Err(_) => Err(CallError::TimedOut(timeout)),
        Ok(Err(panic)) => Err(CallError::Panicked(panic_message(&*panic))),
        Ok(Ok(value)) => Ok(value),
    }
}

/// A guarded call's outcome as one message.
pub(super) fn flatten(outcome: Result<anyhow::Result<()>, CallError>) -> Result<(), String> {
    match outcome {
        Err(error) => Err(error.to_string()),
        Ok(result) => result.map_err(|error| format!("{error:#}")),
    }
}

/// The text of a caught panic.
pub(super) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        format!("panicked: {text}")
    } else if let Some(text) = panic.downcast_ref::<String>() {
        format!("panicked: {text}")
    } else {
        "panicked".to_string()
    }
}
