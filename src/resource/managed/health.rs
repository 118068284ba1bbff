//! A managed resource's health: checks (a pass makes it Ready, failures Degraded then
//! Error), recovery from Degraded (one shared attempt: a health check, then a reconnect
//! where the resource has one), reconnects, and operations retried across them.

use std::time::Instant;

use futures::future::BoxFuture;

use super::guard::{flatten, guarded};
use super::{AttemptOutcome, Core, Managed};
use crate::resource::{HealthReport, Resource, ResourceError, ResourceState};

impl<R: Resource> Managed<R> {
    /// Degraded → Ready through one recovery attempt shared by every caller that finds the
    /// resource Degraded while it runs, as an initialize attempt is shared. Without it, N
    /// callers ran N health checks (three failures in a row are an Error, so a burst of
    /// callers could turn a Degraded resource into an Error) and N reconnects.
    pub(super) async fn recover(&self) -> Result<(), ResourceError> {
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
    pub(super) fn start_recovery(&self, core: &mut Core) -> AttemptOutcome {
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
    pub(super) async fn run_recovery(&self) -> Result<(), ResourceError> {
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

    pub(super) fn health_report(
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
}
