//! `Managed<R>`: the state machine around a resource, and the only way to reach it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::{broadcast, watch};
use tokio::task::{AbortHandle, JoinHandle};

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

    /// Degraded → Ready through one recovery attempt shared by every caller that finds the
    /// resource Degraded while it runs, as an initialize attempt is shared. Without it, N
    /// callers ran N health checks (three failures in a row are an Error, so a burst of
    /// callers could turn a Degraded resource into an Error) and N reconnects.
    async fn recover(&self) -> Result<(), ResourceError> {
        let outcome = {
            let mut core = self.core();
            if core.state != ResourceState::Degraded {
                // It moved on since the caller looked: the caller's next round follows.
                return Ok(());
            }
            match &core.recovery {
                Some(recovery) => recovery.clone(),
                None => self.start_recovery(&mut core),
            }
        };
        outcome.await
    }

    /// Starts a recovery as a task of its own, so that it does not die with the caller
    /// that started it while others wait on it. Called with the core locked, so that the
    /// recovery is visible at once (and the task cannot clear it before it is set).
    fn start_recovery(&self, core: &mut Core) -> AttemptOutcome {
        let this = self
            .this
            .upgrade()
            .expect("a Managed resource is only reachable through its Arc");
        let task = tokio::spawn(async move {
            let result = this.run_recovery().await;
            // A caller that finds the resource still Degraded from now on starts afresh.
            this.core().recovery = None;
            result
        });
        let outcome = self.shared_outcome(task);
        core.recovery = Some(outcome.clone());
        outcome
    }

    /// Degraded → Ready if a health check passes, else through reconnect where supported.
    async fn run_recovery(&self) -> Result<(), ResourceError> {
        let report = self.check_health().await;
        if report.state != ResourceState::Degraded {
            // Ready: done. Error: the next round re-initializes. Closed: the next round fails.
            return Ok(());
        }
        match self.reconnect().await {
            // Superseded: an initialize or reset took over; the next round follows it.
            Ok(()) | Err(ResourceError::ReconnectSuperseded { .. }) => Ok(()),
            Err(ResourceError::ReconnectUnsupported { .. }) => Err(self.unavailable(
                ResourceState::Degraded,
                report
                    .message
                    .as_deref()
                    .unwrap_or("its health check fails"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Initializes the resource, or joins the attempt already in flight: however many
    /// callers arrive at once, the inner `initialize` runs once and all of them get its
    /// outcome. Bounded by `initialize_timeout`.
    pub async fn initialize(&self) -> Result<(), ResourceError> {
        let outcome = {
            let mut core = self.core();
            match core.state {
                ResourceState::Ready | ResourceState::Degraded => return Ok(()),
                ResourceState::Closing | ResourceState::Closed => {
                    return Err(self.unavailable(
                        core.state,
                        "it has been cleaned up; reset it to use it again",
                    ));
                }
                ResourceState::Initializing => match &core.attempt {
                    Some(attempt) => attempt.outcome.clone(),
                    None => self.start_attempt(&mut core, false, None),
                },
                ResourceState::Uninitialized => self.start_attempt(&mut core, false, None),
                // Whatever failed may have left part of the resource behind: tear it down first.
                ResourceState::Error => self.start_attempt(&mut core, true, None),
            }
        };
        outcome.await
    }

    /// Starts an initialize attempt as a task of its own. Called with the core locked, so
    /// that the state becomes Initializing and the attempt becomes visible at once.
    fn start_attempt(
        &self,
        core: &mut Core,
        teardown_first: bool,
        after: Option<AttemptOutcome>,
    ) -> AttemptOutcome {
        let this = self
            .this
            .upgrade()
            .expect("a Managed resource is only reachable through its Arc");
        self.set_state(core, ResourceState::Initializing, None);
        core.stats.initialize_attempts += 1;
        core.generation += 1;
        let generation = core.generation;
        let task = tokio::spawn(async move {
            if let Some(previous) = after {
                // An aborted attempt may still be between two polls on another thread.
                let _ = previous.await;
            }
            this.run_attempt(generation, teardown_first).await
        });
        let abort = task.abort_handle();
        let outcome = self.shared_outcome(task);
        core.attempt = Some(Attempt {
            outcome: outcome.clone(),
            abort,
        });
        outcome
    }

    /// The outcome of an attempt's task, for every caller to await; an aborted task is
    /// `Cancelled`.
    fn shared_outcome(&self, task: JoinHandle<Result<(), ResourceError>>) -> AttemptOutcome {
        let (id, kind) = (self.id.clone(), R::KIND.to_string());
        async move {
            match task.await {
                Ok(result) => result,
                Err(_) => Err(ResourceError::Cancelled { id, kind }),
            }
        }
        .boxed()
        .shared()
    }

    async fn run_attempt(
        &self,
        generation: u64,
        teardown_first: bool,
    ) -> Result<(), ResourceError> {
        let started = Instant::now();
        if teardown_first {
            self.teardown_inner().await;
        }
        let result = match guarded(self.config.initialize_timeout, self.inner.initialize()).await {
            Err(CallError::TimedOut(timeout)) => Err(ResourceError::InitializeTimeout {
                id: self.id.clone(),
                kind: R::KIND.to_string(),
                timeout,
            }),
            Err(CallError::Panicked(message)) => Err(self.initialize_failed(message)),
            Ok(Err(error)) => Err(self.initialize_failed(format!("{error:#}"))),
            Ok(Ok(())) => Ok(()),
        };
        if result.is_err() {
            // A failed attempt may hold part of what it acquired (a bound socket, half of
            // the weights): release it now, so that nothing leaks and a retry starts clean.
            self.teardown_inner().await;
        }
        let mut core = self.core();
        core.stats.last_initialize_duration = Some(started.elapsed());
        if core.state != ResourceState::Initializing || core.generation != generation {
            // Cleanup or reset took over while this attempt was finishing.
            return Err(ResourceError::Cancelled {
                id: self.id.clone(),
                kind: R::KIND.to_string(),
            });
        }
        core.attempt = None;
        match &result {
            Ok(()) => {
                core.stats.consecutive_health_failures = 0;
                self.set_state(&mut core, ResourceState::Ready, None);
            }
            Err(error) => {
                core.stats.initialize_failures += 1;
                let message = error.to_string();
                self.record_error(&mut core, message.clone());
                self.set_state(&mut core, ResourceState::Error, Some(message));
            }
        }
        result
    }

    /// Runs the inner cleanup after a failed attempt or before a rebuild; its errors are
    /// recorded, never returned (the attempt's own outcome is what the callers need).
    async fn teardown_inner(&self) {
        if let Err(message) = self.run_inner_cleanup().await {
            let mut core = self.core();
            core.stats.cleanup_failures += 1;
            self.record_error(
                &mut core,
                format!("cleanup before re-initialize failed: {message}"),
            );
        }
    }

    async fn run_inner_cleanup(&self) -> Result<(), String> {
        flatten(guarded(self.config.cleanup_timeout, self.inner.cleanup()).await)
    }

    /// Cleans the resource up: Closing, then Closed whatever happens.
    ///
    /// Idempotent (a Closed resource returns at once). An initialize in flight is aborted
    /// and awaited first, so no task of it is left running. Errors of the inner cleanup are
    /// recorded as the last error and returned; the resource is Closed all the same.
    pub async fn cleanup(&self) -> Result<(), ResourceError> {
        let _lifecycle = self.lifecycle.lock().await;
        let attempt = {
            let mut core = self.core();
            if core.state == ResourceState::Closed {
                return Ok(());
            }
            self.set_state(&mut core, ResourceState::Closing, None);
            core.attempt.take()
        };
        if let Some(attempt) = attempt {
            attempt.abort.abort();
            let _ = attempt.outcome.await;
        }
        let started = Instant::now();
        let outcome = self.run_inner_cleanup().await;
        let mut core = self.core();
        core.stats.cleanups += 1;
        core.stats.last_cleanup_duration = Some(started.elapsed());
        let result = outcome.map_err(|message| {
            core.stats.cleanup_failures += 1;
            ResourceError::CleanupFailed {
                id: self.id.clone(),
                kind: R::KIND.to_string(),
                message,
            }
        });
        let reason = result.as_ref().err().map(ToString::to_string);
        if let Some(message) = &reason {
            self.record_error(&mut core, message.clone());
        }
        self.set_state(&mut core, ResourceState::Closed, reason);
        result
    }

    /// Back to Uninitialized from any state, then initialize again: for operators and the
    /// CLI when a resource is stuck. What the resource held is released first.
    pub async fn reset(&self) -> Result<(), ResourceError> {
        let outcome = {
            let _lifecycle = self.lifecycle.lock().await;
            let mut core = self.core();
            core.stats.resets += 1;
            core.stats.consecutive_health_failures = 0;
            let previous = core.attempt.take().map(|attempt| {
                attempt.abort.abort();
                attempt.outcome
            });
            self.set_state(
                &mut core,
                ResourceState::Uninitialized,
                Some("reset".into()),
            );
            self.start_attempt(&mut core, true, previous)
        };
        outcome.await
    }

    /// Runs the health check: a pass makes the resource Ready, a failure Degraded, and
    /// `health_failure_threshold` failures in a row Error. Only Ready and Degraded
    /// resources are checked; others are reported as not checked.
    ///
    /// A check that a cleanup, reset or re-initialize overtook is reported but changes
    /// nothing: it checked an instance that is gone (and likely failed because it was torn
    /// down under it), so it must not judge the one there now.
    pub async fn check_health(&self) -> HealthReport {
        let _one_at_a_time = self.health.lock().await;
        let started = Instant::now();
        let (state, generation) = {
            let core = self.core();
            (core.state, core.generation)
        };
        if !state.is_usable() {
            return self.health_report(
                false,
                false,
                state,
                Some(format!("not checked: {state}")),
                started,
            );
        }
        let outcome = flatten(guarded(self.config.health_timeout, self.inner.health()).await);
        let mut core = self.core();
        core.stats.health_checks += 1;
        if core.generation != generation || !core.state.is_usable() {
            let state = core.state;
            let message = if core.generation != generation {
                format!(
                    "the resource was re-initialized during the check (now {state}); result ignored"
                )
            } else {
                format!("state changed to {state} during the check; result ignored")
            };
            drop(core);
            return self.health_report(true, outcome.is_ok(), state, Some(message), started);
        }
        match outcome {
            Ok(()) => {
                core.stats.consecutive_health_failures = 0;
                self.set_state(&mut core, ResourceState::Ready, None);
                drop(core);
                self.health_report(true, true, ResourceState::Ready, None, started)
            }
            Err(message) => {
                core.stats.health_failures += 1;
                core.stats.consecutive_health_failures += 1;
                let failures = core.stats.consecutive_health_failures;
                let message = format!("health check failed ({failures} in a row): {message}");
                let to = if failures >= self.config.health_failure_threshold {
                    ResourceState::Error
                } else {
                    ResourceState::Degraded
                };
                self.record_error(&mut core, message.clone());
                self.set_state(&mut core, to, Some(message.clone()));
                drop(core);
                self.health_report(true, false, to, Some(message), started)
            }
        }
    }

    fn health_report(
        &self,
        checked: bool,
        healthy: bool,
        state: ResourceState,
        message: Option<String>,
        started: Instant,
    ) -> HealthReport {
        HealthReport {
            id: self.id.clone(),
            kind: R::KIND.to_string(),
            checked,
            healthy,
            state,
            message,
            duration: started.elapsed(),
        }
    }

    /// Marks a Ready resource Degraded because something outside its health check went
    /// wrong (an operation hit a transient error). The next `ensure_ready` tries to recover.
    pub fn report_problem(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut core = self.core();
        if core.state == ResourceState::Ready {
            self.record_error(&mut core, reason.clone());
            self.set_state(&mut core, ResourceState::Degraded, Some(reason));
        }
    }

    /// Re-establishes the resource's connection (network resources only): Ready on
    /// success; on failure the error is recorded and the state left as it was.
    ///
    /// An initialize does not wait for the lifecycle lock (its callers must not queue
    /// behind a slow reconnect), so one may start while a reconnect runs, tear the instance
    /// down and build another. The reconnect then worked on an instance that is gone: its
    /// outcome is ignored and it fails with `ReconnectSuperseded`, rather than calling the
    /// torn-down (or failed) resource Ready.
    pub async fn reconnect(&self) -> Result<(), ResourceError> {
        let _lifecycle = self.lifecycle.lock().await;
        let (state, generation) = {
            let core = self.core();
            (core.state, core.generation)
        };
        if !matches!(
            state,
            ResourceState::Ready | ResourceState::Degraded | ResourceState::Error
        ) {
            return Err(self.unavailable(state, "only an initialized resource can reconnect"));
        }
        let outcome = match guarded(self.config.initialize_timeout, self.inner.reconnect()).await {
            Err(error) => Some(Err(error.to_string())),
            Ok(None) => None,
            Ok(Some(result)) => Some(result.map_err(|error| format!("{error:#}"))),
        };
        let Some(outcome) = outcome else {
            return Err(ResourceError::ReconnectUnsupported {
                id: self.id.clone(),
                kind: R::KIND.to_string(),
            });
        };
        let mut core = self.core();
        core.stats.reconnects += 1;
        if core.generation != generation {
            return Err(ResourceError::ReconnectSuperseded {
                id: self.id.clone(),
                kind: R::KIND.to_string(),
            });
        }
        match outcome {
            Ok(()) => {
                if matches!(
                    core.state,
                    ResourceState::Ready | ResourceState::Degraded | ResourceState::Error
                ) {
                    core.stats.consecutive_health_failures = 0;
                    self.set_state(&mut core, ResourceState::Ready, Some("reconnected".into()));
                }
                Ok(())
            }
            Err(message) => {
                core.stats.reconnect_failures += 1;
                let error = ResourceError::ReconnectFailed {
                    id: self.id.clone(),
                    kind: R::KIND.to_string(),
                    message,
                };
                self.record_error(&mut core, error.to_string());
                Err(error)
            }
        }
    }

    /// Runs `op` on the ready resource, retrying transient errors (as the resource judges
    /// them) with exponential backoff and a reconnect in between, up to the retry policy's
    /// limit. Gives up with the last error, saying how many attempts were made.
    ///
    /// `op` returns a boxed future so that it may borrow the resource
    /// (`|peer| peer.send(message.clone()).boxed()`).
    pub async fn with_connection<T, F>(&self, what: &str, mut op: F) -> anyhow::Result<T>
    where
        F: for<'a> FnMut(&'a R) -> BoxFuture<'a, anyhow::Result<T>>,
    {
        let policy = &self.config.retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.ensure_ready().await {
                Ok(inner) => match op(inner).await {
                    Ok(value) => return Ok(value),
                    Err(error) if self.inner.is_transient(&error) => error,
                    Err(error) => return Err(error.context(format!("{what} on '{}'", self.id))),
                },
                Err(error) if self.state().is_closed() => return Err(error.into()),
                Err(error) => anyhow::Error::new(error),
            };
            if attempt >= max_attempts {
                return Err(error.context(format!(
                    "{what} on '{}' gave up after {attempt} attempt(s)",
                    self.id
                )));
            }
            {
                let mut core = self.core();
                core.stats.transient_errors += 1;
            }
            self.report_problem(format!("{what} failed (attempt {attempt}): {error:#}"));
            tokio::time::sleep(policy.backoff(attempt)).await;
            // A failed reconnect is recorded; the next attempt's ensure_ready tries again.
            let _ = self.reconnect().await;
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

/// How a call into the inner resource failed before it could return.
#[derive(Debug)]
enum CallError {
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
async fn guarded<T>(timeout: Duration, call: impl Future<Output = T>) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(call).catch_unwind()).await {
        Err(_) => Err(CallError::TimedOut(timeout)),
        Ok(Err(panic)) => Err(CallError::Panicked(panic_message(&*panic))),
        Ok(Ok(value)) => Ok(value),
    }
}

/// A guarded call's outcome as one message.
fn flatten(outcome: Result<anyhow::Result<()>, CallError>) -> Result<(), String> {
    match outcome {
        Err(error) => Err(error.to_string()),
        Ok(result) => result.map_err(|error| format!("{error:#}")),
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        format!("panicked: {text}")
    } else if let Some(text) = panic.downcast_ref::<String>() {
        format!("panicked: {text}")
    } else {
        "panicked".to_string()
    }
}
