//! What a concrete resource implements.

use std::future::Future;

/// The thing a [`Managed`](super::Managed) wrapper drives through its lifecycle.
///
/// Implementors only say *how* to acquire, release and check themselves; the wrapper owns
/// the state machine, the timeouts, the statistics and the single-flight rules, and is the
/// only way to reach the implementor's own operations (through `ensure_ready`).
///
/// Methods take `&self`: a resource keeps what it acquires behind its own interior
/// mutability, so that operations already running keep working on what they hold while a
/// cleanup releases it for everybody else.
pub trait Resource: Send + Sync + 'static {
    /// The resource type shown in reports (`peer_handle`, `inference_engine`, ...).
    const KIND: &'static str;

    /// Acquire whatever the resource needs. Called again after a failure, after a reset
    /// and after recovering from Error, so it must start from whatever state a failed
    /// attempt or `cleanup` left behind.
    fn initialize(&self) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Release everything. Must be idempotent: it runs after a failed initialize, on
    /// reset, and on the final cleanup, possibly more than once.
    fn cleanup(&self) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// A cheap liveness check; an error makes the resource Degraded (and Error after
    /// enough failures in a row). The default has nothing to check.
    fn health(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Re-establish a lost connection without a full re-initialize.
    ///
    /// Only network resources have one: they return `Some(result)`. The default `None`
    /// says there is no connection to re-establish, so a Degraded resource whose health
    /// check still fails stays unusable until it is reset or re-initialized.
    fn reconnect(&self) -> impl Future<Output = Option<anyhow::Result<()>>> + Send {
        async { None }
    }

    /// Whether an error from one of this resource's operations is worth retrying (a
    /// dropped connection, a busy peer) rather than final (bad input). Drives
    /// `with_connection`. The default treats nothing as transient.
    fn is_transient(&self, _error: &anyhow::Error) -> bool {
        false
    }

    /// Resource-specific details for reports: addresses, loaded shard, counters.
    fn info(&self) -> serde_json::Value {
        serde_json::Value::Object(Default::default())
    }
}
