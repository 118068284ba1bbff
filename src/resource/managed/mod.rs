//! `Managed<R>`: the state machine around a resource, and the only way to reach it.
//!
//! Here: the state it keeps, how it is built, what it shows, and `ensure_ready`, which
//! takes a resource wherever it stands to Ready. Its transitions live beside it:
//! `transitions.rs` (initialize, one attempt shared by every caller; cleanup; reset),
//! `health.rs` (health checks, recovery from Degraded, reconnect, retried operations)
//! and `guard.rs` (every call into the inner resource, bounded in time, panics caught).

mod guard;
mod health;
mod transitions;

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use super::stats::History;
use super::wait::{WaitTimeout, wait_for_state};
use super::{
    HealthReport, Resource, ResourceConfig, ResourceError, ResourceRegistry, ResourceSnapshot,
    ResourceState, ResourceStats, StateChange,
};

/// How many state changes a slow event subscriber may fall behind before it sees a gap.
const EVENT_CAPACITY: usize = 256;

/// The shared outcome of one initialize or recovery attempt: every concurrent caller
/// awaits a clone.
type AttemptOutcome = Shared<BoxFuture<'static, Result<(), ResourceError>>>;

/// An initialize attempt in flight: a spawned task, so that it neither dies with the
/// caller that started it nor outlives a cleanup (which aborts it and awaits the end).
struct Attempt {
    outcome: AttemptOutcome,
    abort: AbortHandle,
}

/// Everything that changes, behind one lock so that a state and the bookkeeping that goes
/// with it always change together. Never held across an await.
struct Core {
    state: ResourceState,
    /// Numbers the initialize attempts: an attempt commits its outcome only if it is still
    /// the latest (a reset or cleanup may have replaced it while it finished).
    generation: u64,
    since: SystemTime,
    attempt: Option<Attempt>,
    /// The recovery of a Degraded resource in flight, shared like an initialize attempt.
    /// Cleared by the recovery itself when it ends.
    recovery: Option<AttemptOutcome>,
    last_error: Option<String>,
    stats: ResourceStats,
    history: History,
}

/// A resource under lifecycle management.
///
/// Owns the inner resource `R` and never hands it out except through
/// [`ensure_ready`](Self::ensure_ready) (and [`with_connection`](Self::with_connection),
/// which calls it): code cannot reach a peer or the engine without passing the readiness
/// check, because there is no other way to get at them.
///
/// Always lives in an `Arc` (the builder returns one): initialize attempts run as tasks of
/// their own that hold a reference.
pub struct Managed<R: Resource> {
    id: String,
    name: String,
    config: ResourceConfig,
    inner: R,
    core: Mutex<Core>,
    state_tx: watch::Sender<ResourceState>,
    events: broadcast::Sender<StateChange>,
    /// Serialises the calls that tear the inner resource down or rebuild it (cleanup,
    /// reset, reconnect), so that they never interleave.
    lifecycle: tokio::sync::Mutex<()>,
    /// One health check at a time, so that "consecutive failures" means what it says.
    health: tokio::sync::Mutex<()>,
    this: Weak<Self>,
}

/// Builds a [`Managed`] resource.
pub struct ManagedBuilder<R: Resource> {
    id: String,
    name: Option<String>,
    config: ResourceConfig,
    inner: R,
    registry: Option<Arc<ResourceRegistry>>,
}

impl<R: Resource> ManagedBuilder<R> {
    /// A display name for reports (defaults to the id).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn config(mut self, config: ResourceConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers the resource, so that monitors, the admin API and the CLI see it.
    pub fn register_in(mut self, registry: &Arc<ResourceRegistry>) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    pub fn build(self) -> Arc<Managed<R>> {
        let (state_tx, _) = watch::channel(ResourceState::Uninitialized);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let history = History::new(self.config.history_limit);
        let managed = Arc::new_cyclic(|this| Managed {
            name: self.name.unwrap_or_else(|| self.id.clone()),
            id: self.id,
            config: self.config,
            inner: self.inner,
            core: Mutex::new(Core {
                state: ResourceState::Uninitialized,
                generation: 0,
                since: SystemTime::now(),
                attempt: None,
                recovery: None,
                last_error: None,
                stats: ResourceStats::default(),
                history,
            }),
            state_tx,
            events,
            lifecycle: tokio::sync::Mutex::new(()),
            health: tokio::sync::Mutex::new(()),
            this: this.clone(),
        });
        if let Some(registry) = self.registry {
            registry.register(managed.clone());
        }
        managed
    }
}

impl<R: Resource> Managed<R> {
    /// Starts building a managed resource with the given unique id.
    pub fn builder(id: impl Into<String>, inner: R) -> ManagedBuilder<R> {
        ManagedBuilder {
            id: id.into(),
            name: None,
            config: ResourceConfig::default(),
            inner,
            registry: None,
        }
    }

    /// A managed resource with default settings, not registered anywhere.
    pub fn new(id: impl Into<String>, inner: R) -> Arc<Self> {
        Self::builder(id, inner).build()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> &'static str {
        R::KIND
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &ResourceConfig {
        &self.config
    }

    pub fn state(&self) -> ResourceState {
        *self.state_tx.borrow()
    }

    /// The latest state, as a watch channel: wait on it instead of polling or sleeping.
    /// A watch only keeps the newest value; use [`events`](Self::events) to see every step.
    pub fn subscribe(&self) -> watch::Receiver<ResourceState> {
        self.state_tx.subscribe()
    }

    /// Every state change from now on, in order.
    pub fn events(&self) -> broadcast::Receiver<StateChange> {
        self.events.subscribe()
    }

    /// Waits until the state satisfies `pred`, or fails after `timeout` with the last state seen.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(ResourceState) -> bool,
    ) -> Result<ResourceState, WaitTimeout> {
        wait_for_state(self.subscribe(), timeout, pred).await
    }

    pub fn last_error(&self) -> Option<String> {
        self.core().last_error.clone()
    }

    pub fn stats(&self) -> ResourceStats {
        self.core().stats.clone()
    }

    pub fn history(&self) -> Vec<StateChange> {
        self.core().history.to_vec()
    }

    /// Everything known about the resource now.
    pub fn snapshot(&self) -> ResourceSnapshot {
        let info = self.inner.info();
        let core = self.core();
        ResourceSnapshot {
            id: self.id.clone(),
            kind: R::KIND.to_string(),
            name: self.name.clone(),
            state: core.state,
            since: core.since,
            last_error: core.last_error.clone(),
            stats: core.stats.clone(),
            history: core.history.to_vec(),
            info,
        }
    }

    /// The gate to the resource: makes it ready if it can be made ready, and only then
    /// hands out access to it.
    ///
    /// - Uninitialized / Error: initialize (an Error is torn down first);
    /// - Initializing: wait for the attempt in flight (or for the one a reset replaces it
    ///   with);
    /// - Ready: go ahead;
    /// - Degraded: check health, then reconnect where the resource can, and fail if it is
    ///   still unusable; concurrent callers share one such recovery;
    /// - Closing / Closed: fail with an error naming the resource and its state.
    pub async fn ensure_ready(&self) -> Result<&R, ResourceError> {
        let result = self.make_ready().await;
        let mut core = self.core();
        match &result {
            Ok(()) => core.stats.ready_calls += 1,
            Err(_) => core.stats.failed_ready_calls += 1,
        }
        result.map(|()| &self.inner)
    }

    async fn make_ready(&self) -> Result<(), ResourceError> {
        // Each round moves the state on. Three rounds and the last look below cover the
        // longest path: Degraded → (the recovery's health check fails for the last time)
        // Error → an initialize that a reset cancels → the reset's attempt → Ready.
        for _ in 0..3 {
            let state = self.state();
            match state {
                ResourceState::Ready => return Ok(()),
                ResourceState::Uninitialized
                | ResourceState::Initializing
                | ResourceState::Error => match self.initialize().await {
                    // Cancelled: a reset or cleanup replaced the attempt this caller
                    // joined. After a reset the next round joins the reset's attempt (the
                    // caller wants the resource, not that particular attempt); after a
                    // cleanup it fails on the closed state.
                    Ok(()) | Err(ResourceError::Cancelled { .. }) => {}
                    Err(error) => return Err(error),
                },
                ResourceState::Degraded => self.recover().await?,
                ResourceState::Closing | ResourceState::Closed => {
                    return Err(self.unavailable(state, "it has been cleaned up"));
                }
            }
        }
        match self.state() {
            ResourceState::Ready => Ok(()),
            state => Err(self.unavailable(state, "it did not become ready")),
        }
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while the lock was held cannot leave Core inconsistent in a way that
        // matters more than losing the node: carry on with what is there.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_state(&self, core: &mut Core, to: ResourceState, reason: Option<String>) {
        if core.state == to {
            return;
        }
        let change = StateChange {
            from: core.state,
            to,
            at: SystemTime::now(),
            reason,
        };
        core.state = to;
        core.since = change.at;
        core.history.push(change.clone());
        self.state_tx.send_replace(to);
        let _ = self.events.send(change);
    }

    fn record_error(&self, core: &mut Core, message: String) {
        core.stats.errors += 1;
        core.last_error = Some(message);
    }

    fn unavailable(&self, state: ResourceState, reason: &str) -> ResourceError {
        ResourceError::Unavailable {
            id: self.id.clone(),
            kind: R::KIND.to_string(),
            state,
            reason: reason.to_string(),
        }
    }

    fn initialize_failed(&self, message: String) -> ResourceError {
        ResourceError::InitializeFailed {
            id: self.id.clone(),
            kind: R::KIND.to_string(),
            message,
        }
    }
}

/// The object-safe view of every managed resource, whatever its inner type.
impl<R: Resource> super::AnyResource for Managed<R> {
    fn id(&self) -> &str {
        &self.id
    }
    fn kind(&self) -> &str {
        R::KIND
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn state(&self) -> ResourceState {
        Managed::state(self)
    }
    fn subscribe(&self) -> watch::Receiver<ResourceState> {
        Managed::subscribe(self)
    }
    fn events(&self) -> broadcast::Receiver<StateChange> {
        Managed::events(self)
    }
    fn snapshot(&self) -> ResourceSnapshot {
        Managed::snapshot(self)
    }
    fn initialize(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Managed::initialize(self).boxed()
    }
    fn check_health(&self) -> BoxFuture<'_, HealthReport> {
        Managed::check_health(self).boxed()
    }
    fn reset(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Managed::reset(self).boxed()
    }
    fn cleanup(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Managed::cleanup(self).boxed()
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}
