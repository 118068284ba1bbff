//! The batcher's worker outlives what goes wrong inside a batch: a panic fails that
//! batch's steps (with an error the flow can tell apart), frees what they held, and the
//! next steps run; a step submitted while the worker turns to wait is not left waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exo::engine::serve::batcher::{
    BatchLimits, BatchPanicked, Batcher, StepDone, StepJob, StepRunner, StepSink,
};
use exo::engine::serve::kv_cache::CachePosition;
use exo::engine::{ShardInput, ShardOutput};
use tokio::sync::mpsc;

/// A model of steps alone: each request's position, a step checks its cache out (Busy)
/// as a real model does, and the first `panics` batches panic with it checked out.
#[derive(Default)]
struct Runner {
    panics: AtomicUsize,
    positions: Mutex<HashMap<String, CachePosition>>,
    abandoned: Mutex<Vec<(String, usize, usize)>>,
}

impl StepRunner for Runner {
    fn cache_position(&self, job: &StepJob) -> CachePosition {
        *self
            .positions
            .lock()
            .unwrap()
            .get(&job.request_id)
            .unwrap_or(&CachePosition::Absent)
    }

    fn run_batch(&self, jobs: Vec<StepJob>) -> Vec<(StepDone, StepSink)> {
        for job in &jobs {
            self.positions
                .lock()
                .unwrap()
                .insert(job.request_id.clone(), CachePosition::Busy);
        }
        if self
            .panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("an injected fault in the middle of a batch");
        }
        jobs.into_iter()
            .map(|job| {
                self.positions.lock().unwrap().insert(
                    job.request_id.clone(),
                    CachePosition::At(job.position + job.input.len()),
                );
                (
                    StepDone {
                        tag: job.tag,
                        request_id: job.request_id,
                        output: Ok(ShardOutput::Logits(vec![0.0; 4])),
                    },
                    job.sink,
                )
            })
            .collect()
    }

    fn abandon(&self, request_id: &str, start: usize, end: usize) {
        self.positions.lock().unwrap().remove(request_id);
        self.abandoned
            .lock()
            .unwrap()
            .push((request_id.to_string(), start, end));
    }
}

fn job(request_id: &str, tag: u64, sink: &StepSink) -> StepJob {
    StepJob {
        request_id: request_id.into(),
        start: 0,
        end: 2,
        input: ShardInput::Tokens(vec![1, 2, 3]),
        position: 0,
        reserve_positions: 8,
        prefix: Vec::new(),
        group: None,
        tag,
        sink: sink.clone(),
    }
}

/// The next finished batch, within 2 s (the bound on any fault).
async fn next_batch(batches: &mut mpsc::UnboundedReceiver<Vec<StepDone>>) -> Vec<StepDone> {
    tokio::time::timeout(Duration::from_secs(2), batches.recv())
        .await
        .expect("no outcome within 2 s: the batch's steps were lost")
        .expect("the sink is open")
}

#[tokio::test]
async fn a_panic_in_a_batch_fails_its_steps_frees_their_caches_and_the_next_steps_run() {
    let runner = Arc::new(Runner::default());
    runner.panics.store(1, Ordering::SeqCst);
    let model: Arc<dyn StepRunner> = runner.clone();
    let batcher = Arc::new(Batcher::new(BatchLimits::default()));
    let (sink, mut batches) = mpsc::unbounded_channel();

    batcher.submit(Arc::downgrade(&model), job("first", 1, &sink));
    let failed = next_batch(&mut batches).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].tag, 1);
    let Err(error) = &failed[0].output else {
        panic!("the step of the panicked batch did not fail");
    };
    assert!(
        error.downcast_ref::<BatchPanicked>().is_some(),
        "the failure says the batch panicked (so the flow marks the engine degraded): {error:#}"
    );
    assert!(
        format!("{error:#}").contains("an injected fault"),
        "{error:#}"
    );
    assert_eq!(
        *runner.abandoned.lock().unwrap(),
        vec![("first".to_string(), 0, 2)],
        "the panicked step's cache (and its reservation) is freed"
    );
    assert_eq!(
        runner.cache_position(&job("first", 1, &sink)),
        CachePosition::Absent,
        "nothing stays checked out"
    );
    assert_eq!(batcher.panics(), 1, "the panic is counted");

    // The worker lives on: a later step runs, and the failed request can start again.
    batcher.submit(Arc::downgrade(&model), job("second", 2, &sink));
    let done = next_batch(&mut batches).await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].tag, 2);
    assert!(
        done[0].output.is_ok(),
        "{:?}",
        done[0].output.as_ref().err()
    );
    batcher.submit(Arc::downgrade(&model), job("first", 3, &sink));
    let done = next_batch(&mut batches).await;
    assert!(
        done[0].output.is_ok(),
        "{:?}",
        done[0].output.as_ref().err()
    );
    drop(model);
}

#[tokio::test]
async fn a_step_submitted_while_the_worker_turns_to_wait_runs_at_once() {
    let runner = Arc::new(Runner::default());
    let model: Arc<dyn StepRunner> = runner.clone();
    // Nothing but a submit may wake the worker within the test's bound.
    let batcher = Arc::new(Batcher::new(BatchLimits {
        recheck: Duration::from_secs(60),
        ..BatchLimits::default()
    }));
    let (sink, mut batches) = mpsc::unbounded_channel();

    batcher.submit(Arc::downgrade(&model), job("first", 1, &sink));
    assert_eq!(next_batch(&mut batches).await[0].tag, 1);

    // The next time the worker finds the queue empty, a step arrives between its look and
    // its wait: the submit's wake-up must not be lost.
    let pending = Mutex::new(Some((
        Arc::downgrade(&batcher),
        Arc::downgrade(&model),
        job("second", 2, &sink),
    )));
    batcher.on_idle(Arc::new(move || {
        if let Some((batcher, model, job)) = pending.lock().unwrap().take()
            && let Some(batcher) = batcher.upgrade()
        {
            batcher.submit(model, job);
        }
    }));
    // Wake the worker into an idle round: a step that cannot run yet (its predecessor
    // never comes) makes it look at the queue and find nothing to run.
    let mut waiting = job("third", 3, &sink);
    waiting.position = 5;
    runner
        .positions
        .lock()
        .unwrap()
        .insert("third".into(), CachePosition::At(0));
    batcher.submit(Arc::downgrade(&model), waiting);
    let done = next_batch(&mut batches).await;
    assert_eq!(done[0].tag, 2);
    assert!(done[0].output.is_ok());
    drop(model);
}
