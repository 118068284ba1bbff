//! A managed resource's transitions: initialize (one attempt, a task of its own, shared
//! by every caller), cleanup (Closed whatever happens, an attempt in flight aborted and
//! awaited first) and reset (back to Uninitialized, then initialize again).

use std::time::Instant;

use futures::future::FutureExt;
use tokio::task::JoinHandle;

use super::guard::{CallError, flatten, guarded};
use super::{Attempt, AttemptOutcome, Core, Managed};
use crate::resource::{Resource, ResourceError, ResourceState};

impl<R: Resource> Managed<R> {
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
    pub(super) fn start_attempt(
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
    pub(super) fn shared_outcome(
        &self,
        task: JoinHandle<Result<(), ResourceError>>,
    ) -> AttemptOutcome {
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

    pub(super) async fn run_attempt(
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
    pub(super) async fn teardown_inner(&self) {
        if let Err(message) = self.run_inner_cleanup().await {
            let mut core = self.core();
            core.stats.cleanup_failures += 1;
            self.record_error(
                &mut core,
                format!("cleanup before re-initialize failed: {message}"),
            );
        }
    }

    pub(super) async fn run_inner_cleanup(&self) -> Result<(), String> {
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
}
