//! The origin's side of a request: plan it, send its prompt through the ring in chunks,
//! then one step per token, stream the text, and tell every node when it is over. A node
//! of the plan lost on the way costs a re-plan, not the answer (see `continuation`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::continuation::{Interruption, Replan, epoch_id};
use super::deadline::StepTimes;
use super::outbox::Item;
use super::{GenerateRequest, GenerationEvent, GenerationSummary, RequestFlow, describe, to_wire};
use crate::discovery::PeerInfo;
use crate::engine::sampling::TokenLogprobs;
use crate::engine::tokenizer::TextTokenizer;
use crate::engine::{Decoding, FinishReason, TokenOutcome};
use crate::proto::pb;
use crate::resource::Resource;
use crate::server::{StepInput, StepOutcome, ValidatedContext};
use crate::topology::Partition;

/// What the origin keeps of a request across its epochs.
struct RequestState {
    decoding: Decoding,
    /// Tokens the request may generate in all (the context's room after the prompt).
    max_tokens: usize,
    started: Instant,
    first_token_at: Option<Instant>,
    /// Nodes this request has lost: no later epoch plans over them.
    excluded: HashSet<String>,
    replans: Vec<Replan>,
    /// How long this request's decoding steps take (its deadlines follow them).
    step_times: StepTimes,
    /// A re-plan whose epoch has not produced its first token yet, and when the loss
    /// was noticed.
    replanning: Option<(Instant, Replan)>,
}

/// How an epoch of a request ended.
enum EpochEnd {
    Finished(FinishReason),
    /// The client went away.
    Cancelled,
    /// A node was lost (or a step failed): plan again and go on.
    Interrupted(Interruption),
}

/// The epoch of a request running now, so that its nodes can be told when it ends.
type Current = Option<(String, Partition)>;

impl RequestFlow {
    /// Starts a generation; its events arrive on the returned channel. Dropping the
    /// receiver cancels the request (the client went away).
    pub fn generate(self: &Arc<Self>, request: GenerateRequest) -> mpsc::Receiver<GenerationEvent> {
        let (events, receiver) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move { this.run_generation(request, events).await });
        receiver
    }

    async fn run_generation(
        self: Arc<Self>,
        request: GenerateRequest,
        events: mpsc::Sender<GenerationEvent>,
    ) {
        let request_id = request
            .request_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(new_request_id);
        self.count(|s| s.requests_started += 1);
        let mut current = None;
        // Everything logged on this node about the request names it (the peers get the id
        // in each call's metadata, see `crate::proto::request_ids`).
        let span = tracing::info_span!("request", id = %request_id);
        let outcome = self
            .drive(&request_id, &request, &events, &mut current)
            .instrument(span)
            .await;
        let reason = match &outcome {
            Ok(Some(_)) => "finished",
            Ok(None) => "cancelled",
            Err(_) => "failed",
        };
        // The client hears first; the nodes are told after (one round trip it need not wait
        // for).
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
                let _ = events.send(GenerationEvent::Finished(summary)).await;
            }
            Ok(None) => {
                self.count(|s| s.requests_cancelled += 1);
                tracing::info!("request {request_id} cancelled by its client");
            }
            Err(error) => {
                self.count(|s| s.requests_failed += 1);
                let message = format!("{error:#}");
                tracing::warn!("request {request_id} failed: {message}");
                let _ = events.send(GenerationEvent::Failed(message)).await;
            }
        }
        drop(events);
        if let Some((wire_id, plan)) = current {
            self.finish_everywhere(&wire_id, &plan, reason).await;
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
        if request.prompt.is_empty() {
            bail!("the prompt is empty");
        }
        if self.is_draining() {
            bail!(
                "node {} is draining (shutting down) and takes no new requests: ask another node",
                self.node_id
            );
        }
        request.sampling.validate()?;
        let model = self.model().await?;
        let context_length = model.config().context_length;
        if request.prompt.len() >= context_length {
            bail!(
                "the prompt has {} tokens; the model's context holds {context_length}",
                request.prompt.len()
            );
        }
        let mut plan = self.plan_for(&model, &HashSet::new())?;
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
        let mut state = RequestState {
            decoding: Decoding::new(max_tokens, request.stop.clone())
                .ignoring_eos(request.ignore_eos),
            max_tokens,
            started: Instant::now(),
            first_token_at: None,
            excluded: HashSet::new(),
            replans: Vec::new(),
            step_times: StepTimes::default(),
            replanning: None,
        };
        let mut epoch = 0u32;
        loop {
            let wire_id = epoch_id(request_id, epoch);
            let (results_tx, mut results) = mpsc::unbounded_channel();
            self.lock_pending().insert(wire_id.clone(), results_tx);
            *current = Some((wire_id.clone(), plan.clone()));
            let ended = self
                .run_epoch(
                    &wire_id,
                    &plan,
                    request,
                    &tokenizer,
                    &mut state,
                    events,
                    &mut results,
                )
                .await;
            self.lock_pending().remove(&wire_id);
            let why = match ended? {
                EpochEnd::Finished(finish) => {
                    let first = state.first_token_at.unwrap_or(state.started);
                    return Ok(Some(GenerationSummary {
                        request_id: request_id.to_string(),
                        finish,
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
            };
            let noticed = Instant::now();
            // A re-plan whose epoch failed before its first token is reported as it is.
            if let Some((earlier, mut replan)) = state.replanning.take() {
                replan.seconds = earlier.elapsed().as_secs_f64();
                state.replans.push(replan);
            }
            if state.replans.len() >= self.config.max_replans {
                bail!(
                    "{} (the request was planned again {} time(s), the most allowed)",
                    why.reason,
                    self.config.max_replans
                );
            }
            // Which nodes of the plan are gone: those named, and those that do not answer
            // a health check now.
            let mut lost = why.lost.clone();
            for node in self.unresponsive(&plan, &lost).await {
                lost.push(node);
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
            if let Some((old_id, old_plan)) = current.take()
                && let Some(this) = self.this.upgrade()
            {
                tokio::spawn(async move {
                    this.finish_everywhere(&old_id, &old_plan, "replanned")
                        .await;
                });
            }
            for node in &lost {
                let incarnation = self
                    .peers
                    .handle(node)
                    .map_or(0, |h| Arc::as_ptr(&h) as usize);
                self.losses.record(node, incarnation);
                state.excluded.insert(node.clone());
            }
            let model = self.model().await?;
            plan = self.plan_for(&model, &state.excluded).with_context(|| {
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
            drop(model);
            epoch += 1;
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
        }
    }

    /// Runs one epoch of a request over `plan`: the prompt and every token generated so
    /// far go through the ring as a prefill (in chunks), whose last row samples the next
    /// token; then one step per token until the request ends or the epoch is interrupted.
    #[allow(clippy::too_many_arguments)]
    async fn run_epoch(
        &self,
        wire_id: &str,
        plan: &Partition,
        request: &GenerateRequest,
        tokenizer: &Arc<TextTokenizer>,
        state: &mut RequestState,
        events: &mpsc::Sender<GenerationEvent>,
        results: &mut mpsc::UnboundedReceiver<(u64, StepOutcome)>,
    ) -> anyhow::Result<EpochEnd> {
        let history: Vec<u32> = request
            .prompt
            .iter()
            .chain(state.decoding.generated())
            .copied()
            .collect();
        let reserve_positions = request.prompt.len() + state.max_tokens;
        let mut joined = self.peers.subscribe();
        let context =
            |step: u64, position: usize, sample: bool, token_index: u64| ValidatedContext {
                request_id: wire_id.to_string(),
                origin_node_id: self.node_id.clone(),
                origin_address: self.address(),
                plan: plan.clone(),
                index: 0,
                sampling: request.sampling,
                position,
                step,
                sample,
                reserve_positions,
                token_index,
                top_logprobs: request.top_logprobs,
            };
        // The history, in chunks the shards can interleave with other requests' steps;
        // only the last chunk's logits are sampled, as token number `generated.len()`.
        let chunk = self.config.prefill_chunk.max(1);
        let mut step = 0u64;
        let mut position = 0usize;
        let chunks: Vec<&[u32]> = history.chunks(chunk).collect();
        let token_index = state.decoding.generated().len() as u64;
        for (i, tokens) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            if let Err(why) = self
                .send_to_first_shard(context(step, position, last, token_index), tokens.to_vec())
                .await
            {
                return Ok(EpochEnd::Interrupted(why));
            }
            position += tokens.len();
            step += 1;
        }
        let mut awaited = step - 1;
        let mut first_of_epoch = true;
        loop {
            let step_started = Instant::now();
            let patience = state.step_times.patience(self.config.step_timeout);
            let (token, logprobs) = match self
                .await_token(
                    wire_id,
                    plan,
                    awaited,
                    first_of_epoch.then_some(history.len()),
                    patience,
                    events,
                    results,
                    &mut joined,
                )
                .await?
            {
                Ok(token) => token,
                Err(end) => return Ok(end),
            };
            tracing::debug!(
                "{wire_id} step {awaited}: token after {:.2} ms",
                step_started.elapsed().as_secs_f64() * 1e3
            );
            if !first_of_epoch {
                state.step_times.record(step_started.elapsed());
            }
            first_of_epoch = false;
            state.first_token_at.get_or_insert_with(Instant::now);
            if let Some((noticed, mut replan)) = state.replanning.take() {
                replan.seconds = noticed.elapsed().as_secs_f64();
                tracing::info!(
                    "{wire_id}: first token {:.3} s after the loss was noticed",
                    replan.seconds
                );
                state.replans.push(replan.clone());
                if events
                    .send(GenerationEvent::Replanned(replan))
                    .await
                    .is_err()
                {
                    return Ok(EpochEnd::Cancelled);
                }
            }
            let counted = state.decoding.generated().len();
            let pushed = state.decoding.push(tokenizer, token)?;
            // A token the generation kept (not an end-of-sequence token) has its logprobs
            // reported before its text.
            if let Some(logprobs) = logprobs
                && state.decoding.generated().len() > counted
                && events
                    .send(GenerationEvent::Logprobs(logprobs))
                    .await
                    .is_err()
            {
                return Ok(EpochEnd::Cancelled);
            }
            let (text, finish) = match pushed {
                TokenOutcome::Continue(text) => (text, None),
                TokenOutcome::Finished(text, reason) => (text, Some(reason)),
            };
            if !text.is_empty() && events.send(GenerationEvent::Text(text)).await.is_err() {
                return Ok(EpochEnd::Cancelled);
            }
            if let Some(finish) = finish {
                return Ok(EpochEnd::Finished(finish));
            }
            let token_index = state.decoding.generated().len() as u64;
            if let Err(why) = self
                .send_to_first_shard(context(step, position, true, token_index), vec![token])
                .await
            {
                return Ok(EpochEnd::Interrupted(why));
            }
            awaited = step;
            position += 1;
            step += 1;
        }
    }

    /// Waits for the token of step `awaited`. `prefill`: the epoch's first token, after a
    /// prefill of that many tokens (the hard cap allows for the prefill and for loading
    /// the plan's weights). Ok(Err(end)): the epoch ends without a token.
    #[allow(clippy::too_many_arguments)]
    async fn await_token(
        &self,
        wire_id: &str,
        plan: &Partition,
        awaited: u64,
        prefill: Option<usize>,
        patience: Duration,
        events: &mpsc::Sender<GenerationEvent>,
        results: &mut mpsc::UnboundedReceiver<(u64, StepOutcome)>,
        joined: &mut tokio::sync::watch::Receiver<Vec<PeerInfo>>,
    ) -> anyhow::Result<Result<(u32, Option<TokenLogprobs>), EpochEnd>> {
        let started = Instant::now();
        let allowance = match prefill {
            Some(tokens) => {
                self.config.load_allowance + self.config.prefill_time_per_token * tokens as u32
            }
            None => Duration::ZERO,
        };
        let hard_stop = started + patience + allowance + self.config.busy_cap;
        let mut armed = started;
        loop {
            let expires = (armed + patience).min(hard_stop);
            let (for_step, outcome) = tokio::select! {
                outcome = results.recv() => outcome.context("the request's result channel closed")?,
                _ = tokio::time::sleep_until(expires.into()) => {
                    let reason = format!(
                        "no result for step {awaited} of {wire_id} after {:.1?} from the ring {}",
                        started.elapsed(),
                        describe(plan)
                    );
                    // A slow ring is not a dead one (see `deadline`): only nodes that do
                    // not answer a health check now are lost. All answering, wait on.
                    let silent = self.unresponsive(plan, &[]).await;
                    if !silent.is_empty() {
                        return Ok(Err(EpochEnd::Interrupted(Interruption {
                            lost: silent,
                            reason,
                        })));
                    }
                    if Instant::now() >= hard_stop {
                        bail!("{reason}: every node answers, but the ring made no progress on this request");
                    }
                    armed = Instant::now();
                    continue;
                }
                _ = events.closed() => return Ok(Err(EpochEnd::Cancelled)),
                (gone, draining) = member_lost(joined, plan, &self.node_id) => {
                    let reason = if draining {
                        format!("node {gone} is draining (leaving the cluster)")
                    } else {
                        format!("node {gone} left the cluster during the request")
                    };
                    return Ok(Err(EpochEnd::Interrupted(Interruption::lost(gone, reason))));
                }
            };
            match outcome {
                StepOutcome::Error(error) => {
                    return Ok(Err(EpochEnd::Interrupted(Interruption::new(error))));
                }
                // A prompt chunk made it through, or a late duplicate of a retried
                // message: nothing to do but wait on.
                _ if for_step != awaited => {
                    tracing::debug!(
                        "{wire_id}: result of step {for_step} while awaiting {awaited}"
                    );
                }
                StepOutcome::Done => {}
                StepOutcome::Token(token, logprobs) => return Ok(Ok((token, logprobs))),
            }
        }
    }

    /// The nodes of `plan` (other than this one and those in `known`) that are not
    /// joined peers or do not answer a health check within the health timeout.
    async fn unresponsive(&self, plan: &Partition, known: &[String]) -> Vec<String> {
        let timeout = self.peers.config().timeouts.health;
        let probes = plan
            .entries
            .iter()
            .filter(|e| e.node_id != self.node_id && !known.contains(&e.node_id))
            .map(|entry| async move {
                let answers = match self.peers.handle(&entry.node_id) {
                    Some(handle) if handle.state().is_usable() => {
                        tokio::time::timeout(timeout, async {
                            match handle.ensure_ready().await {
                                Ok(peer) => peer.health().await.is_ok(),
                                Err(_) => false,
                            }
                        })
                        .await
                        .unwrap_or(false)
                    }
                    _ => false,
                };
                (!answers).then(|| entry.node_id.clone())
            });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A step for the plan's first shard: run here, or queued for that node. Err: this
    /// node (the first shard) refused it.
    async fn send_to_first_shard(
        &self,
        context: ValidatedContext,
        tokens: Vec<u32>,
    ) -> Result<(), Interruption> {
        let first = context.plan.entries[0].clone();
        if first.node_id == self.node_id {
            let mut answers = self
                .accept_steps(vec![(context, StepInput::Tokens(tokens))])
                .await;
            if let Some(Err(status)) = answers.pop() {
                return Err(Interruption::new(status.message().to_string()));
            }
            return Ok(());
        }
        let item = pb::StepItem {
            context: Some(to_wire(&context)),
            input: Some(pb::step_item::Input::Tokens(pb::TokenList { tokens })),
        };
        self.send_to(&first.node_id, &first.address, Item::Step(item));
        Ok(())
    }

    /// Tells every node of the plan that the request is over (in parallel, best effort).
    async fn finish_everywhere(&self, request_id: &str, plan: &Partition, reason: &str) {
        let calls = plan.entries.iter().map(|entry| async move {
            if entry.node_id == self.node_id {
                self.finish_local(request_id).await;
            } else if let Some(handle) = self.peers.handle(&entry.node_id) {
                // Usable peers only: one that is gone or failing is not worth a connection
                // attempt (its caches go with it, or expire).
                if !handle.state().is_usable() {
                    return;
                }
                if let Ok(peer) = handle.ensure_ready().await
                    && let Err(error) = peer.finish_request(request_id, reason).await
                {
                    tracing::debug!(
                        "could not tell {} to drop {request_id}: {error:#}",
                        entry.node_id
                    );
                }
            }
        });
        futures::future::join_all(calls).await;
    }
}

/// A fresh request id.
pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4().simple())
}

/// Resolves when a node of `plan` (other than `self_id`) is no longer a joined peer, or
/// is draining (it asked to be moved off): the node, and whether it is draining.
async fn member_lost(
    joined: &mut tokio::sync::watch::Receiver<Vec<PeerInfo>>,
    plan: &Partition,
    self_id: &str,
) -> (String, bool) {
    loop {
        {
            let peers = joined.borrow_and_update();
            for entry in plan.entries.iter().filter(|e| e.node_id != self_id) {
                match peers.iter().find(|p| p.node_id == entry.node_id) {
                    None => return (entry.node_id.clone(), false),
                    Some(peer) if peer.draining => return (entry.node_id.clone(), true),
                    Some(_) => {}
                }
            }
        }
        if joined.changed().await.is_err() {
            // The peer table is gone (shutdown): let the step deadline decide.
            std::future::pending::<()>().await;
        }
    }
}
