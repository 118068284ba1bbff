//! What the shard side of the flow keeps: the steps queued on the engine's batcher (by
//! the tag they were queued with), where the batcher hands finished batches, which steps
//! each request has had accepted (so that a retried message does not run twice), and
//! which requests have finished here, the grammar matchers of constrained requests, and
//! the steps waiting for their layers' weights.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::constraints::Constraints;
use super::layer_wait::LayerWaits;
use super::ledger::{Finished, StepLedger, Steps};
use crate::engine::LoadedModel;
use crate::engine::serve::batcher::{StepJob, StepSink};
use crate::proto::ValidatedContext;

/// The shard side's state.
pub(super) struct ShardState {
    /// Steps queued on the engine's batcher, by tag, with when they were queued.
    running: Mutex<HashMap<u64, (ValidatedContext, Instant)>>,
    next_tag: AtomicU64,
    /// Where the batcher hands finished batches (a task of the flow takes them).
    pub(super) completions: StepSink,
    /// The last step of each request this node accepted.
    accepted: Mutex<StepLedger>,
    finished: Mutex<Finished>,
    /// The grammar matchers of the constrained requests this node samples.
    pub(super) constraints: Constraints,
    /// Steps waiting for the weights of their layers, with the model they go to.
    pub(super) layer_waits: LayerWaits<(Arc<LoadedModel>, StepJob)>,
}

impl ShardState {
    pub(super) fn new(completions: StepSink) -> Self {
        ShardState {
            running: Mutex::new(HashMap::new()),
            next_tag: AtomicU64::new(1),
            completions,
            accepted: Mutex::new(StepLedger::default()),
            finished: Mutex::new(Finished::default()),
            constraints: Constraints::default(),
            layer_waits: LayerWaits::default(),
        }
    }

    /// A fresh tag for a step queued on the batcher.
    pub(super) fn next_tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    /// Step `tag` of `context` is queued from now.
    pub(super) fn queued(&self, tag: u64, context: ValidatedContext) {
        self.lock_running().insert(tag, (context, Instant::now()));
    }

    /// The context of queued step `tag`, which is no longer queued.
    pub(super) fn take(&self, tag: u64) -> Option<ValidatedContext> {
        self.lock_running().remove(&tag).map(|(context, _)| context)
    }

    /// Steps queued on the batcher now.
    pub(super) fn queued_steps(&self) -> usize {
        self.lock_running().len()
    }

    /// Whether step `step` of `request_id` is new here (else it arrived before: a retried
    /// message), recording it.
    pub(super) fn accept(&self, request_id: &str, step: u64) -> bool {
        self.lock_accepted().accept(request_id, step)
    }

    /// The output of `step` of `request_id` left this node.
    pub(super) fn passed(&self, request_id: &str, step: u64) {
        self.lock_accepted().passed(request_id, step);
    }

    /// How far `request_id` got here.
    pub(super) fn steps(&self, request_id: &str) -> Option<Steps> {
        self.lock_accepted().steps(request_id)
    }

    /// Whether some step of `request_id` was accepted here.
    pub(super) fn knows(&self, request_id: &str) -> bool {
        self.lock_accepted().knows(request_id)
    }

    pub(super) fn is_finished(&self, request_id: &str) -> bool {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(request_id)
    }

    /// `request_id` is over here: its later steps are refused.
    pub(super) fn finish(&self, request_id: &str) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id);
        self.lock_accepted().forget(request_id);
        self.constraints.forget(request_id);
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (ValidatedContext, Instant)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_accepted(&self) -> std::sync::MutexGuard<'_, StepLedger> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }
}
