//! Continuous batching: the steps of different requests that are ready on a node at the
//! same time run as one batched forward pass.
//!
//! Steps are queued; a worker thread takes every ready step at once — all single-token
//! decode steps and at most one prompt chunk (so a new prompt holds the users already
//! decoding up for one chunk at most) — groups them by layer range, and runs each group
//! through its shard in one pass: matmuls read every weight once per batch, not once per
//! request. Requests join and leave the batch at any step. A request's steps run in
//! position order, whatever order they arrived in. Each finished batch is handed back in
//! one piece, so that the outputs can travel on together.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::metrics::{Histogram, LATENCY_BUCKETS};

use super::kv_cache::CachePosition;
use crate::engine::group::GroupPlacement;
use crate::engine::model::shard_io::{ShardInput, ShardOutput};

/// One request's step on one of this node's layer ranges.
pub struct StepJob {
    pub request_id: String,
    pub start: usize,
    pub end: usize,
    pub input: ShardInput,
    /// The request's position (its cache length) before this step.
    pub position: usize,
    /// Positions to reserve in the KV budget when this step starts the request here.
    pub reserve_positions: usize,
    /// A request's first step at a position > 0: the chain hashes of the blocks of
    /// [0, position), restored from the prefix cache (`super::prefix_cache`); empty
    /// otherwise.
    pub prefix: Vec<u64>,
    /// The caller's handle on the step, handed back with its outcome.
    pub tag: u64,
    /// Where the finished batch goes.
    pub sink: StepSink,
    /// When the layers are shared by a tensor-parallel group this node leads: the group.
    /// Only steps of the same group run in one batch.
    pub group: Option<Arc<GroupPlacement>>,
}

impl StepJob {
    /// Whether `other` may run in the same batch: the same layers, on the same group.
    fn runs_with(&self, other: &StepJob) -> bool {
        (self.start, self.end) == (other.start, other.end) && self.group == other.group
    }
}

/// A step's outcome.
pub struct StepDone {
    pub tag: u64,
    pub request_id: String,
    pub output: anyhow::Result<ShardOutput>,
}

/// Where a finished batch's outcomes go, one message per batch.
pub type StepSink = mpsc::UnboundedSender<Vec<StepDone>>;

/// What the batcher drives: the model whose steps it queues (the engine's loaded model).
pub trait StepRunner: Send + Sync + 'static {
    /// Where the request of `job` stands on the job's layers.
    fn cache_position(&self, job: &StepJob) -> CachePosition;

    /// Runs a batch of steps of one layer range; each step's outcome, with its sink.
    fn run_batch(&self, jobs: Vec<StepJob>) -> Vec<(StepDone, StepSink)>;

    /// Forgets a step that never finished (its batch panicked): drops its request's cache
    /// on the range, checked out or not, and the reservation it holds.
    fn abandon(&self, request_id: &str, start: usize, end: usize);
}

/// The error of a step whose batch panicked: the engine itself is in question (the flow
/// marks it degraded), not the request.
#[derive(Debug)]
pub struct BatchPanicked {
    /// What the panic said.
    pub message: String,
}

impl std::fmt::Display for BatchPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the engine panicked running this step's batch ({}); the step was dropped and the batcher restarted",
            self.message
        )
    }
}

impl std::error::Error for BatchPanicked {}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Rows (tokens) a batch may hold; single-token steps always fit, a prompt chunk joins
    /// only if it fits too (or the batch would otherwise be empty).
    pub max_rows: usize,
    /// A step waiting longer than this for its predecessor fails (its request is lost).
    pub max_wait: Duration,
    /// With nothing new submitted, the worker looks at the steps waiting for their
    /// predecessors this often (to fail those past `max_wait`).
    pub recheck: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_rows: 1024,
            max_wait: Duration::from_secs(120),
            recheck: Duration::from_secs(1),
        }
    }
}

struct Queued {
    job: StepJob,
    since: Instant,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    running: bool,
    /// Steps submitted so far: the worker waits only if none came since it last looked
    /// (a submit between its look and its wait would otherwise go unnoticed).
    submitted: u64,
}

/// The queue and its worker.
pub struct Batcher {
    state: Mutex<State>,
    ready: Condvar,
    /// Set when the model goes away (without the lock: the last reference to the model
    /// may be dropped by the worker itself).
    stopping: std::sync::atomic::AtomicBool,
    limits: BatchLimits,
    batches: std::sync::atomic::AtomicU64,
    batched_steps: std::sync::atomic::AtomicU64,
    /// Batches that panicked.
    panics: std::sync::atomic::AtomicU64,
    /// How long each batch took, per layer range (for `/metrics`: step time per shard).
    step_times: Mutex<Vec<(usize, usize, Arc<Histogram>)>>,
    /// Called each time the worker found nothing to run, before it waits: tests submit
    /// from here, at the worst moment for a wake-up.
    idle_hook: Mutex<Option<IdleHook>>,
}

/// See [`Batcher::on_idle`].
pub type IdleHook = Arc<dyn Fn() + Send + Sync>;

impl Batcher {
    pub fn new(limits: BatchLimits) -> Self {
        Batcher {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            stopping: Default::default(),
            limits,
            batches: Default::default(),
            batched_steps: Default::default(),
            panics: Default::default(),
            step_times: Mutex::new(Vec::new()),
            idle_hook: Mutex::new(None),
        }
    }

    /// Runs `hook` each time the worker has found nothing to run and is about to wait
    /// (between its look at the queue and its wait): where a submit must not be missed.
    pub fn on_idle(&self, hook: IdleHook) {
        *self.idle_hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Batch durations per layer range `(start, end)` this node has run.
    pub fn step_times(&self) -> Vec<(usize, usize, Arc<Histogram>)> {
        self.step_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record_batch(&self, start: usize, end: usize, took: Duration) {
        let mut times = self.step_times.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = match times.iter().find(|(s, e, _)| (*s, *e) == (start, end)) {
            Some((_, _, h)) => h.clone(),
            None => {
                let h = Arc::new(Histogram::new(LATENCY_BUCKETS));
                times.push((start, end, h.clone()));
                h
            }
        };
        drop(times);
        histogram.observe(took);
    }

    /// Queues a step; the worker starts on first use and lives as long as the model.
    pub fn submit(self: &Arc<Self>, model: Weak<dyn StepRunner>, job: StepJob) {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            fail_all(vec![(
                job,
                "the inference engine is shutting down".to_string(),
            )]);
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.queue.push_back(Queued {
            job,
            since: Instant::now(),
        });
        state.submitted += 1;
        if !state.running {
            state.running = true;
            let batcher = self.clone();
            std::thread::Builder::new()
                .name("exo-batcher".into())
                .spawn(move || run(batcher, model))
                .expect("the batcher thread starts");
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Steps waiting to run.
    pub fn queued(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue
            .len()
    }

    /// Batches run and steps they held (their ratio is the mean batch size).
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.batches.load(Relaxed), self.batched_steps.load(Relaxed))
    }

    /// Batches that panicked (each failed its steps; the worker went on).
    pub fn panics(&self) -> u64 {
        self.panics.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the worker after the batch it is running; queued steps fail. Takes no lock
    /// (the model's drop calls it, possibly on the worker itself).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.ready.notify_all();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits for ready steps and takes a batch of them, with the steps that can never run
    /// (None: stop; the queued steps are failed).
    #[allow(clippy::type_complexity)]
    fn next_batch(
        &self,
        model: &Weak<dyn StepRunner>,
    ) -> Option<(Arc<dyn StepRunner>, Vec<StepJob>, Vec<(StepJob, String)>)> {
        loop {
            let strong = model.upgrade().filter(|_| !self.is_stopping());
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(strong) = strong else {
                let left: Vec<(StepJob, String)> = state
                    .queue
                    .drain(..)
                    .map(|q| (q.job, "the inference engine is shutting down".to_string()))
                    .collect();
                state.running = false;
                drop(state);
                fail_all(left);
                return None;
            };
            let (batch, failed) = take_ready(&mut state.queue, strong.as_ref(), &self.limits);
            if !batch.is_empty() || !failed.is_empty() {
                return Some((strong, batch, failed));
            }
            let looked_at = state.submitted;
            // Nothing ready: wait for a new step (and look at waiting ones now and then).
            // The model is let go of first, outside the lock.
            drop(state);
            drop(strong);
            let hook = self
                .idle_hook
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook();
            }
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if !self.is_stopping() && state.submitted == looked_at {
                drop(
                    self.ready
                        .wait_timeout(state, self.limits.recheck)
                        .unwrap_or_else(|p| p.into_inner()),
                );
            }
        }
    }
}

/// Fails steps that cannot run, each to its sink.
fn fail_all(steps: Vec<(StepJob, String)>) {
    deliver(
        steps
            .into_iter()
            .map(|(job, reason)| {
                (
                    StepDone {
                        tag: job.tag,
                        request_id: job.request_id,
                        output: Err(anyhow::anyhow!(reason)),
                    },
                    job.sink,
                )
            })
            .collect(),
    );
}

/// Takes the steps that can run now: for each request only its earliest queued step, and
/// only if it is at its cache's position; every single-token step; at most one multi-row
/// step (a prompt chunk), if it fits the row budget or nothing else is ready; all of one
/// layer range (the range of the oldest ready step). Steps that can never run (behind
/// their cache, or a continuation with no cache and nothing before it, or waiting too
/// long) are taken out to fail, with the reason.
fn take_ready(
    queue: &mut VecDeque<Queued>,
    model: &dyn StepRunner,
    limits: &BatchLimits,
) -> (Vec<StepJob>, Vec<(StepJob, String)>) {
    let mut taken: Vec<StepJob> = Vec::new();
    let mut failed = Vec::new();
    let mut rows = 0;
    let mut chunk_taken = false;
    let mut seen = std::collections::HashSet::new();
    let mut i = 0;
    while i < queue.len() {
        let q = &queue[i];
        let job = &q.job;
        // Only a request's earliest queued step on a range may run.
        if !seen.insert((job.request_id.clone(), job.start, job.end)) {
            i += 1;
            continue;
        }
        let at = model.cache_position(job);
        let runnable = match at {
            CachePosition::At(len) => job.position == len,
            CachePosition::Absent => job.position == 0 || !job.prefix.is_empty(),
            CachePosition::Busy => false,
        };
        let problem = match at {
            CachePosition::At(len) if job.position < len => Some(format!(
                "step at position {} of request {} arrived after the request reached {len}",
                job.position, job.request_id
            )),
            CachePosition::Absent if job.position > 0 && job.prefix.is_empty() => Some(format!(
                "no KV cache for request {} at position {}: it was evicted or never started \
                 on this shard",
                job.request_id, job.position
            )),
            // Only a step held back by its own request's earlier steps can wait too long:
            // one that could run but waits its turn behind other requests is just queued.
            CachePosition::At(_) if !runnable && q.since.elapsed() > limits.max_wait => {
                Some(format!(
                    "step at position {} of request {} waited {:?} for the steps before it",
                    job.position, job.request_id, limits.max_wait
                ))
            }
            _ => None,
        };
        if let Some(reason) = problem {
            let job = queue.remove(i).expect("index in range").job;
            failed.push((job, reason));
            continue;
        }
        if !runnable || taken.first().is_some_and(|first| !first.runs_with(job)) {
            i += 1;
            continue;
        }
        let len = job.input.len();
        let fits = len <= 1 || (!chunk_taken && (rows + len <= limits.max_rows || rows == 0));
        if !fits {
            i += 1;
            continue;
        }
        chunk_taken |= len > 1;
        rows += len;
        taken.push(queue.remove(i).expect("index in range").job);
    }
    (taken, failed)
}

/// The worker: runs batches until the model is dropped or stopped. A batch that panics
/// fails its own steps (freeing what they held) and the worker goes on with the next.
fn run(batcher: Arc<Batcher>, model: Weak<dyn StepRunner>) {
    let _restart = RestartAfterPanic(&batcher);
    while let Some((strong, batch, failed)) = batcher.next_batch(&model) {
        fail_all(failed);
        if batch.is_empty() {
            continue;
        }
        use std::sync::atomic::Ordering::Relaxed;
        batcher.batches.fetch_add(1, Relaxed);
        batcher.batched_steps.fetch_add(batch.len() as u64, Relaxed);
        let (steps, rows) = (
            batch.len(),
            batch.iter().map(|j| j.input.len()).sum::<usize>(),
        );
        let range = (batch[0].start, batch[0].end);
        // What a panic would leave of the batch: enough to fail each step and free its cache.
        let held: Vec<HeldStep> = batch
            .iter()
            .map(|job| HeldStep {
                tag: job.tag,
                request_id: job.request_id.clone(),
                start: job.start,
                end: job.end,
                sink: job.sink.clone(),
            })
            .collect();
        let started = Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| strong.run_batch(batch)));
        batcher.record_batch(range.0, range.1, started.elapsed());
        let done = match outcome {
            Ok(done) => {
                tracing::debug!(
                    "batch of {steps} steps ({rows} rows) in {:.2} ms",
                    started.elapsed().as_secs_f64() * 1e3
                );
                done
            }
            Err(panic) => batcher.panicked(strong.as_ref(), panic_message(&*panic), held),
        };
        drop(strong);
        deliver(done);
    }
}

/// A step of a running batch, as the worker keeps it in case the batch panics.
struct HeldStep {
    tag: u64,
    request_id: String,
    start: usize,
    end: usize,
    sink: StepSink,
}

impl Batcher {
    /// A batch panicked: counts it, frees each step's cache and reservation (a cache the
    /// step had checked out would otherwise stay busy for good) and fails the steps with
    /// [`BatchPanicked`].
    fn panicked(
        &self,
        model: &dyn StepRunner,
        message: String,
        held: Vec<HeldStep>,
    ) -> Vec<(StepDone, StepSink)> {
        self.panics
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(
            "a batch of {} step(s) panicked ({message}): they fail, their caches are dropped, and the batcher goes on",
            held.len()
        );
        held.into_iter()
            .map(|step| {
                model.abandon(&step.request_id, step.start, step.end);
                let error = BatchPanicked {
                    message: message.clone(),
                };
                (
                    StepDone {
                        tag: step.tag,
                        request_id: step.request_id,
                        output: Err(anyhow::Error::new(error)),
                    },
                    step.sink,
                )
            })
            .collect()
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text.to_string(),
        (_, Some(text)) => text.clone(),
        _ => "a panic without a message".into(),
    }
}

/// Should the worker itself end by a panic (outside a batch), the next submit starts a
/// new one instead of queueing behind a worker that is gone.
struct RestartAfterPanic<'a>(&'a Batcher);

impl Drop for RestartAfterPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running = false;
        }
    }
}

/// Hands each finished step to its sink, one message per sink per batch.
fn deliver(done: Vec<(StepDone, StepSink)>) {
    let mut groups: Vec<(StepSink, Vec<StepDone>)> = Vec::new();
    for (step, sink) in done {
        match groups.iter_mut().find(|(s, _)| s.same_channel(&sink)) {
            Some((_, steps)) => steps.push(step),
            None => groups.push((sink, vec![step])),
        }
    }
    for (sink, steps) in groups {
        // A sink that is gone belongs to a node that is shutting down.
        let _ = sink.send(steps);
    }
}
