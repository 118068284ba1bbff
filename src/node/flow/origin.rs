//! The origin's side of a request: plan it, run it epoch by epoch (`epoch`), stream the
//! text, and tell every node when it is over. A node of the plan lost on the way costs a
//! re-plan, not the answer (see `continuation`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::continuation::{Interruption, Replan, epoch_id};
use super::deadline::StepTimes;
use super::drain::LiveGeneration;
use super::epoch::{Epoch, EpochEnd, RequestState};
use super::failure::{FailureKind, FlowError, fail};
use super::model_facts::ModelFacts;
use super::{GenerateRequest, GenerationEvent, GenerationSummary, RequestFlow, describe};
use crate::engine::Decoding;
use crate::engine::serve::prefix_cache::block_hashes;
use crate::engine::text::tokenizer::TextTokenizer;
use crate::topology::Partition;

/// The epoch of a request running now, so that its nodes can be told when it ends, and
/// (once it finished) the blocks its nodes are to keep in their prefix caches.
#[derive(Default)]
struct Current {
    epoch: Option<(String, Partition)>,
    keep: Vec<u64>,
}

/// How long a finished request's client waits for its nodes to say which blocks they
/// kept (so that the conversation's next turn finds them); past it the client hears the
/// end and the nodes are told on in the background.
const KEEP_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

impl RequestFlow {
    /// Starts a generation; its events arrive on the returned channel. Dropping the
    /// receiver cancels the request (the client went away).
    pub fn generate(self: &Arc<Self>, request: GenerateRequest) -> mpsc::Receiver<GenerationEvent> {
        let (events, receiver) = mpsc::channel(256);
        let this = self.clone();
        let live = LiveGeneration::start(&self.generations);
        tokio::spawn(async move { this.run_generation(request, events, live).await });
        receiver
    }

    async fn run_generation(
        self: Arc<Self>,
        request: GenerateRequest,
        events: mpsc::Sender<GenerationEvent>,
        live: LiveGeneration,
    ) {
        let request_id = request
            .request_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(new_request_id);
        self.count(|s| s.requests_started += 1);
        let mut current = Current::default();
        // Everything logged on this node about the request names it (the peers get the id
        // in each call's metadata, see `crate::proto::request_ids`).
        let span = tracing::info_span!("request", id = %request_id);
        let outcome = self
            .drive(&request_id, &request, &events, &mut current)
            .instrument(span)
            .await;
        // Over before the client hears so (what is left is telling the nodes).
        drop(live);
        let reason = match &outcome {
            Ok(Some(_)) => "finished",
            Ok(None) => "cancelled",
            Err(_) => "failed",
        };
        // The client of a failed or cancelled request hears first; the nodes are told after
        // (one round trip it need not wait for). A finished request's nodes are told
        // first, so that they keep its blocks before its client can ask the next turn.
        let epoch = current.epoch.take();
        match outcome {
            Ok(Some(summary)) => {
                self.count(|s| s.requests_finished += 1);
                tracing::info!(
                    "request {request_id} finished ({}): {} prompt + {} generated tokens on {}",
                    summary.finish.as_str(),
                    summary.prompt_tokens,
                    summary.completion_tokens,
                    describe(&summary.partition)
                );
                if let Some((wire_id, plan)) = epoch {
                    let this = self.clone();
                    let keep = std::mem::take(&mut current.keep);
                    let told = tokio::spawn(async move {
                        this.finish_everywhere(&wire_id, &plan, reason, &keep).await;
                    });
                    let _ = tokio::time::timeout(KEEP_WAIT, told).await;
                }
                let _ = events.send(GenerationEvent::Finished(summary)).await;
                return;
            }
            Ok(None) => {
                self.count(|s| s.requests_cancelled += 1);
                tracing::info!("request {request_id} cancelled by its client");
            }
            Err(error) => {
                self.count(|s| s.requests_failed += 1);
                let failure = FlowError::of(&error);
                tracing::warn!(
                    "request {request_id} failed ({}): {}",
                    failure.kind.as_str(),
                    failure.message
                );
                let _ = events.send(GenerationEvent::Failed(failure)).await;
            }
        }
        drop(events);
        if let Some((wire_id, plan)) = epoch {
            self.finish_everywhere(&wire_id, &plan, reason, &[]).await;
        }
    }

    /// The origin's loop over the request's epochs. Ok(None): the client went away.
    async fn drive(
        &self,
        request_id: &str,
        request: &GenerateRequest,
        events: &mpsc::Sender<GenerationEvent>,
        current: &mut Current,
    ) -> anyhow::Result<Option<GenerationSummary>> {
        let Some((mut plan, tokenizer, mut state)) =
            self.begin(request_id, request, events).await?
        else {
            return Ok(None);
        };
        let mut epoch = 0u32;
        loop {
            let wire_id = epoch_id(request_id, epoch);
            current.epoch = Some((wire_id.clone(), plan.clone()));
            let ended = Epoch::start(self, wire_id, &plan, request, &tokenizer, events)
                .run(&mut state)
                .await;
            let why = match ended? {
                EpochEnd::Finished(finish) => {
                    // What the nodes hold of the request: the tokens that went through.
                    let ran: Vec<u32> = request
                        .prompt
                        .iter()
                        .chain(state.decoding.generated())
                        .take(state.fed)
                        .copied()
                        .collect();
                    current.keep = block_hashes(&ran);
                    let first = state.first_token_at.unwrap_or(state.started);
                    return Ok(Some(GenerationSummary {
                        request_id: request_id.to_string(),
                        finish,
                        stop_string: state.decoding.stopped_by().map(str::to_string),
                        prompt_tokens: request.prompt.len(),
                        completion_tokens: state.decoding.generated().len(),
                        prefill_seconds: (first - state.started).as_secs_f64(),
                        decode_seconds: first.elapsed().as_secs_f64(),
                        partition: plan,
                        replans: state.replans,
                    }));
                }
                EpochEnd::Cancelled => return Ok(None),
                EpochEnd::Interrupted(why) => why,
                EpochEnd::PrefixMiss(why) => {
                    // A node no longer holds the prefix this origin thought it kept: run
                    // the request again over the same plan, prefilling all of it.
                    tracing::info!("request {request_id}: {why}; prefilling it whole");
                    self.origin.prefixes.forget(&plan, &state.prefix_claimed);
                    state.reuse_prefix = false;
                    epoch += 1;
                    if let Some((old_id, old_plan)) = current.epoch.take()
                        && let Some(this) = self.this.upgrade()
                    {
                        tokio::spawn(async move {
                            this.finish_everywhere(&old_id, &old_plan, "prefix miss", &[])
                                .await;
                        });
                    }
                    continue;
                }
            };
            epoch += 1;
            plan = self
                .replan(request_id, why, epoch, &plan, &mut state, current)
                .await?;
        }
    }

    /// Checks a new request and plans it; tells the client it started. None: the client
    /// went away.
    async fn begin(
        &self,
        request_id: &str,
        request: &GenerateRequest,
        events: &mpsc::Sender<GenerationEvent>,
    ) -> anyhow::Result<Option<(Partition, Arc<TextTokenizer>, RequestState)>> {
        if request.prompt.is_empty() {
            return fail(FailureKind::InvalidRequest, "the prompt is empty");
        }
        if self.is_draining() {
            return fail(
                FailureKind::Draining,
                format!(
                    "node {} is draining (shutting down) and takes no new requests: ask another node",
                    self.node_id
                ),
            );
        }
        if let Err(error) = request.sampling.validate() {
            return fail(FailureKind::InvalidRequest, format!("{error:#}"));
        }
        let model = self.model().await.map_err(engine_failed)?;
        let context_length = model.config().context_length;
        if request.prompt.len() >= context_length {
            return fail(
                FailureKind::InvalidRequest,
                format!(
                    "the prompt has {} tokens; the model's context holds {context_length}",
                    request.prompt.len()
                ),
            );
        }
        let parallelism = request.parallelism.unwrap_or(self.config.parallelism);
        let plan = self
            .plan_for(&ModelFacts::of(&model), &HashSet::new(), parallelism)
            .map_err(too_small)?;
        let tokenizer = model.tokenizer().clone();
        drop(model);
        if events
            .send(GenerationEvent::Started {
                request_id: request_id.to_string(),
                partition: plan.clone(),
            })
            .await
            .is_err()
        {
            return Ok(None);
        }
        // No more tokens than the context holds after the prompt.
        let max_tokens = request
            .max_tokens
            .min(context_length - request.prompt.len());
        let state = RequestState {
            decoding: Decoding::new(max_tokens, request.stop.clone())
                .ignoring_eos(request.ignore_eos),
            max_tokens,
            started: Instant::now(),
            first_token_at: None,
            excluded: HashSet::new(),
            replans: Vec::new(),
            step_times: StepTimes::default(),
            replanning: None,
            reuse_prefix: true,
            prefix_claimed: Vec::new(),
            fed: 0,
            parallelism,
        };
        Ok(Some((plan, tokenizer, state)))
    }

    /// After an interrupted epoch: finds which nodes of the plan are gone, lets the old
    /// epoch's nodes drop it, and plans epoch number `epoch` over the nodes left (the
    /// re-plan is reported with the new epoch's first token).
    async fn replan(
        &self,
        request_id: &str,
        why: Interruption,
        epoch: u32,
        plan: &Partition,
        state: &mut RequestState,
        current: &mut Current,
    ) -> anyhow::Result<Partition> {
        let noticed = Instant::now();
        // A re-plan whose epoch failed before its first token is reported as it is.
        if let Some((earlier, mut replan)) = state.replanning.take() {
            replan.seconds = earlier.elapsed().as_secs_f64();
            state.replans.push(replan);
        }
        if state.replans.len() >= self.config.max_replans {
            return fail(
                why.kind,
                format!(
                    "{} (the request was planned again {} time(s), the most allowed)",
                    why.reason, self.config.max_replans
                ),
            );
        }
        // Which nodes of the plan are gone: those named, and those that do not answer
        // now (asked about the old epoch, see `progress`).
        let mut lost = why.lost.clone();
        let old_id = current.epoch.as_ref().map_or("", |(id, _)| id.as_str());
        lost.extend(self.probe_ring(plan, old_id, &lost).await.silent);
        // And this node, when the plan gives it layers and its own engine fails: the
        // new plan leaves its layers to the others (it keeps the origin's part).
        if plan.entries.iter().any(|e| e.node_id == self.node_id)
            && !lost.contains(&self.node_id)
            && !self.own_engine_answers().await
        {
            lost.push(self.node_id.clone());
        }
        lost.sort();
        lost.dedup();
        tracing::warn!(
            "request {request_id}: {} (lost: {}); planning again over the nodes left",
            why.reason,
            if lost.is_empty() {
                "none found".into()
            } else {
                lost.join(", ")
            }
        );
        // The old epoch's nodes drop what they hold of it, in the background: the
        // client waits for the new epoch, not for them.
        if let Some((old_id, old_plan)) = current.epoch.take()
            && let Some(this) = self.this.upgrade()
        {
            tokio::spawn(async move {
                this.finish_everywhere(&old_id, &old_plan, "replanned", &[])
                    .await;
            });
        }
        for node in &lost {
            let incarnation = self.peers.incarnation(node).unwrap_or(0);
            self.origin.losses.record(node, incarnation);
            state.excluded.insert(node.clone());
        }
        // This node's own engine lost: plan from what it told before, without asking it.
        let facts = match self.model_facts() {
            Some(facts) => facts,
            None => ModelFacts::of(&*self.model().await.map_err(engine_failed)?),
        };
        let plan = self
            .plan_for(&facts, &state.excluded, state.parallelism)
            .map_err(too_small)
            .with_context(|| {
                format!(
                    "{} — the nodes left cannot carry the request on without {}",
                    why.reason,
                    if lost.is_empty() {
                        "the failed ring".into()
                    } else {
                        lost.join(", ")
                    }
                )
            })?;
        self.count(|s| s.replans += 1);
        let replan = Replan {
            epoch,
            lost,
            reason: why.reason,
            ring: describe(&plan),
            seconds: 0.0,
        };
        tracing::info!("request {request_id}: epoch {epoch} over {}", replan.ring);
        state.replanning = Some((noticed, replan));
        Ok(plan)
    }
}

/// An engine that is not there to serve (through `ensure_ready`) fails the request as
/// the engine's.
fn engine_failed(error: anyhow::Error) -> anyhow::Error {
    FlowError::new(FailureKind::EngineFailed, format!("{error:#}")).into()
}

/// A plan that cannot be made: the nodes cannot hold the model.
fn too_small(error: anyhow::Error) -> anyhow::Error {
    FlowError::new(FailureKind::ClusterTooSmall, format!("{error:#}")).into()
}

/// A fresh request id.
pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4().simple())
}
