//! A loaded model running one batch of steps on one layer range (the batcher's worker
//! calls [`LoadedModel::run_batch`]), in three steps: each step's cache is taken out of
//! the store, the inputs that fit run in one forward pass (with the followers, on a
//! group this node leads), and the caches go back (or are dropped when the pass failed:
//! a half-run batch must not be continued).

use std::sync::Arc;

use super::batcher::{StepDone, StepJob, StepSink};
use super::loaded_model::{LoadedModel, cache_key};
use crate::engine::group::{GroupPlacement, GroupRow};
use crate::engine::model::loaded_shard::LoadedShard;
use crate::engine::model::sequence_cache::SequenceCache;
use crate::engine::model::shard_io::{ShardInput, ShardOutput};

/// A step whose cache is out of the store: what its outcome is sent back with.
struct TakenOut {
    request_id: String,
    key: String,
    tag: u64,
    sink: StepSink,
}

/// A forward pass's outcome, with the steps' caches (in the order of the outputs) and
/// what each step's outcome goes back with.
struct ForwardPass {
    taken: Vec<TakenOut>,
    caches: Vec<SequenceCache>,
    result: anyhow::Result<Vec<ShardOutput>>,
}

impl LoadedModel {
    /// Runs a batch of steps on one layer range (the batcher's worker calls this): each
    /// step's cache is taken out (a new request reserving its positions in the budget),
    /// the inputs that fit run in one forward pass, and each step gets its outcome. A step
    /// that fails leaves its request without a cache here.
    pub fn run_batch(&self, jobs: Vec<StepJob>) -> Vec<(StepDone, StepSink)> {
        let mut done = Vec::with_capacity(jobs.len());
        let Some(first) = jobs.first() else {
            return done;
        };
        let range = (first.start, first.end);
        // A group's batch runs on the leader's slice (this node leads the groups whose
        // steps it queues).
        let group = first.group.clone();
        let member = group.as_ref().map(|_| 0);
        let slice = group.as_ref().and_then(|g| g.slices.first().cloned());
        let shard = match self.shard_sliced(range.0, range.1, slice) {
            Ok(shard) => shard,
            Err(error) => {
                let message = format!("{error:#}");
                for job in jobs {
                    done.push(failed(job.tag, job.request_id, &message, job.sink));
                }
                return done;
            }
        };
        let runnable = self.check_out(&shard, jobs, range, member, &mut done);
        if runnable.is_empty() {
            return done;
        }
        let pass = self.forward(&shard, group.as_ref(), range, runnable);
        self.check_in(pass, &mut done);
        done
    }

    /// Takes each job's cache out of the store (starting one for a new request), once its
    /// input fits the shard; a job that cannot run gets its error in `done` at once.
    fn check_out(
        &self,
        shard: &LoadedShard,
        jobs: Vec<StepJob>,
        (start, end): (usize, usize),
        member: Option<usize>,
        done: &mut Vec<(StepDone, StepSink)>,
    ) -> Vec<(StepJob, String, SequenceCache)> {
        let per_position = shard.kv_bytes_per_position();
        let mut runnable = Vec::with_capacity(jobs.len());
        let mut caches = self.caches();
        for job in jobs {
            let key = cache_key(&job.request_id, start, end, member);
            let checked = shard.check_input(&job.input, job.position).and_then(|_| {
                caches.checkout(
                    &key,
                    job.position,
                    job.reserve_positions * per_position,
                    || self.start_cache(shard, &job.prefix),
                )
            });
            match checked {
                Ok(cache) => runnable.push((job, key, cache)),
                Err(error) => done.push((
                    StepDone {
                        tag: job.tag,
                        request_id: job.request_id,
                        output: Err(error),
                    },
                    job.sink,
                )),
            }
        }
        runnable
    }

    /// Runs the checked-out steps in one forward pass (led across `group` when there is
    /// one).
    fn forward(
        &self,
        shard: &LoadedShard,
        group: Option<&Arc<GroupPlacement>>,
        range: (usize, usize),
        runnable: Vec<(StepJob, String, SequenceCache)>,
    ) -> ForwardPass {
        let mut taken = Vec::with_capacity(runnable.len());
        let mut caches = Vec::with_capacity(runnable.len());
        let mut inputs = Vec::with_capacity(runnable.len());
        let mut rows = Vec::new();
        for (job, key, cache) in runnable {
            let StepJob {
                request_id,
                input,
                tag,
                sink,
                position,
                reserve_positions,
                ..
            } = job;
            if group.is_some() {
                rows.push(GroupRow {
                    request_id: request_id.clone(),
                    position,
                    reserve_positions,
                    input: input.clone(),
                });
            }
            inputs.push(input);
            caches.push(cache);
            taken.push(TakenOut {
                request_id,
                key,
                tag,
                sink,
            });
        }
        let batch: Vec<(ShardInput, &mut SequenceCache)> =
            inputs.into_iter().zip(caches.iter_mut()).collect();
        let result = match group {
            None => shard.forward_batch(batch),
            Some(placement) => self.lead_group(shard, placement, range, rows, batch),
        };
        ForwardPass {
            taken,
            caches,
            result,
        }
    }

    /// Puts the caches back and hands each step its output; when the pass failed, drops
    /// the caches instead and hands every step the error.
    fn check_in(&self, pass: ForwardPass, done: &mut Vec<(StepDone, StepSink)>) {
        let ForwardPass {
            taken,
            caches: caches_out,
            result,
        } = pass;
        let mut caches = self.caches();
        match result {
            Ok(outputs) => {
                for (step, (cache, output)) in
                    taken.into_iter().zip(caches_out.into_iter().zip(outputs))
                {
                    caches.checkin(&step.key, cache);
                    done.push((
                        StepDone {
                            tag: step.tag,
                            request_id: step.request_id,
                            output: Ok(output),
                        },
                        step.sink,
                    ));
                }
                self.step_succeeded();
            }
            Err(error) => {
                let message = format!("{error:#}");
                for step in taken {
                    caches.remove(&step.key);
                    done.push(failed(step.tag, step.request_id, &message, step.sink));
                }
            }
        }
    }
}

/// A step's outcome when the whole batch failed with `message`.
fn failed(tag: u64, request_id: String, message: &str, sink: StepSink) -> (StepDone, StepSink) {
    let output = Err(anyhow::anyhow!("{message}"));
    (
        StepDone {
            tag,
            request_id,
            output,
        },
        sink,
    )
}
