//! One epoch of a request on the origin: the prompt and every token generated so far go
//! through the plan's ring as a prefill, then one step per token; each step's wait
//! notices a lost node (it left, drains, does not answer a health check) and ends the
//! epoch so that the origin can plan again (`continuation`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use super::continuation::{Interruption, Replan};
use super::deadline::StepTimes;
use super::failure::{FailureKind, fail};
use super::ledger::Steps;
use super::outbox::Item;
use super::progress::lost_message;
use super::{GenerateRequest, GenerationEvent, RequestFlow, describe};
use crate::discovery::PeerInfo;
use crate::engine::serve::prefix_cache::{BLOCK_TOKENS, block_hashes};
use crate::engine::serve::sampling::TokenLogprobs;
use crate::engine::text::tokenizer::TextTokenizer;
use crate::engine::{Decoding, FinishReason, TokenOutcome};
use crate::proto::{ConstraintSpec, StepInput, StepOutcome, ValidatedContext, step_to_wire};
use crate::topology::Partition;

/// What the origin keeps of a request across its epochs.
pub(super) struct RequestState {
    pub(super) decoding: Decoding,
    /// Tokens the request may generate in all (the context's room after the prompt).
    pub(super) max_tokens: usize,
    pub(super) started: Instant,
    pub(super) first_token_at: Option<Instant>,
    /// Nodes this request has lost: no later epoch plans over them.
    pub(super) excluded: HashSet<String>,
    pub(super) replans: Vec<Replan>,
    /// How long this request's decoding steps take (its deadlines follow them).
    pub(super) step_times: StepTimes,
    /// A re-plan whose epoch has not produced its first token yet, and when the loss
    /// was noticed.
    pub(super) replanning: Option<(Instant, Replan)>,
    /// Whether an epoch may start from the prefix its nodes keep (not after a miss).
    pub(super) reuse_prefix: bool,
    /// The blocks the current epoch's first step named.
    pub(super) prefix_claimed: Vec<u64>,
    /// Tokens of prompt + generated that went through the ring (the KV its nodes hold).
    pub(super) fed: usize,
    /// How its plans split the model (the request's, else the node's).
    pub(super) parallelism: crate::topology::Parallelism,
}

/// How an epoch of a request ended.
pub(super) enum EpochEnd {
    Finished(FinishReason),
    /// The client went away.
    Cancelled,
    /// A node was lost (or a step failed): plan again and go on.
    Interrupted(Interruption),
    /// A node lacked the prefix the epoch named: run it again without one.
    PrefixMiss(String),
}

/// One epoch of a request: its wire id and plan, where its results arrive and its events
/// go. [`Epoch::start`] registers it for its results; dropping it stops them.
pub(super) struct Epoch<'a> {
    flow: &'a RequestFlow,
    wire_id: String,
    plan: &'a Partition,
    request: &'a GenerateRequest,
    tokenizer: &'a TextTokenizer,
    events: &'a mpsc::Sender<GenerationEvent>,
    results: mpsc::UnboundedReceiver<(u64, StepOutcome)>,
    /// The joined peers: a member of the plan leaving them ends the epoch.
    joined: watch::Receiver<Vec<PeerInfo>>,
}

impl<'a> Epoch<'a> {
    /// An epoch of `request` under `wire_id` over `plan`, waiting for its results.
    pub(super) fn start(
        flow: &'a RequestFlow,
        wire_id: String,
        plan: &'a Partition,
        request: &'a GenerateRequest,
        tokenizer: &'a TextTokenizer,
        events: &'a mpsc::Sender<GenerationEvent>,
    ) -> Self {
        let (results_tx, results) = mpsc::unbounded_channel();
        flow.origin.wait_for(&wire_id, results_tx);
        let joined = flow.peers.subscribe();
        Epoch {
            flow,
            wire_id,
            plan,
            request,
            tokenizer,
            events,
            results,
            joined,
        }
    }

    /// Runs the epoch: the prompt and every token generated so far go through the ring
    /// as a prefill (in chunks), whose last row samples the next token; then one step per
    /// token until the request ends or the epoch is interrupted.
    pub(super) async fn run(&mut self, state: &mut RequestState) -> anyhow::Result<EpochEnd> {
        let history: Vec<u32> = self
            .request
            .prompt
            .iter()
            .chain(state.decoding.generated())
            .copied()
            .collect();
        let reserve = self.request.prompt.len() + state.max_tokens;
        // The longest prefix every node of the plan keeps (at least one token must run, to
        // give the logits the next token is drawn from).
        let hashes = block_hashes(&history);
        let blocks = if state.reuse_prefix {
            self.flow
                .origin
                .prefixes
                .reusable(self.plan, &hashes)
                .min((history.len() - 1) / BLOCK_TOKENS)
        } else {
            0
        };
        state.prefix_claimed = hashes[..blocks].to_vec();
        if blocks > 0 {
            let tokens = (blocks * BLOCK_TOKENS) as u64;
            self.flow.count(|s| {
                s.prefix_reuses += 1;
                s.prefix_reused_tokens += tokens;
            });
        }
        // The rest of the history, in chunks the shards can interleave with other
        // requests' steps; only the last chunk's logits are sampled, as token number
        // `generated.len()`.
        let chunk = self.flow.config.prefill_chunk.max(1);
        let mut step = 0u64;
        let mut position = blocks * BLOCK_TOKENS;
        let chunks: Vec<&[u32]> = history[position..].chunks(chunk).collect();
        let token_index = state.decoding.generated().len() as u64;
        for (i, tokens) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut context = self.context(step, position, last, token_index, reserve);
            if i == 0 {
                context.prefix_blocks = state.prefix_claimed.clone();
            }
            if last && let Some(constraint) = context.constraint.as_mut() {
                // The last shard builds its matcher from the grammar, replaying the
                // tokens generated before this epoch.
                constraint.grammar = self.request.grammar.clone();
                constraint.generated = state.decoding.generated().to_vec();
            }
            if let Err(why) = self.send(context, tokens.to_vec()).await {
                return Ok(EpochEnd::Interrupted(why));
            }
            position += tokens.len();
            step += 1;
        }
        state.fed = position;
        let mut awaited = step - 1;
        let mut first_of_epoch = true;
        loop {
            let step_started = Instant::now();
            let patience = state.step_times.patience(self.flow.config.step_timeout);
            let prefill = first_of_epoch.then_some(history.len());
            let (token, logprobs) = match self.await_token(awaited, prefill, patience).await? {
                Ok(token) => token,
                Err(end) => return Ok(end),
            };
            tracing::debug!(
                "{} step {awaited}: token after {:.2} ms",
                self.wire_id,
                step_started.elapsed().as_secs_f64() * 1e3
            );
            if !first_of_epoch {
                state.step_times.record(step_started.elapsed());
            }
            first_of_epoch = false;
            state.first_token_at.get_or_insert_with(Instant::now);
            if let Some(end) = self.take_token(state, token, logprobs).await? {
                return Ok(end);
            }
            let token_index = state.decoding.generated().len() as u64;
            let context = self.context(step, position, true, token_index, reserve);
            if let Err(why) = self.send(context, vec![token]).await {
                return Ok(EpochEnd::Interrupted(why));
            }
            awaited = step;
            position += 1;
            state.fed = position;
            step += 1;
        }
    }

    /// The context of a step of this epoch.
    fn context(
        &self,
        step: u64,
        position: usize,
        sample: bool,
        token_index: u64,
        reserve_positions: usize,
    ) -> ValidatedContext {
        ValidatedContext {
            request_id: self.wire_id.clone(),
            origin_node_id: self.flow.node_id.clone(),
            origin_address: self.flow.address(),
            plan: self.plan.clone(),
            index: 0,
            sampling: self.request.sampling,
            position,
            step,
            sample,
            reserve_positions,
            token_index,
            top_logprobs: self.request.top_logprobs,
            prefix_blocks: Vec::new(),
            constraint: self.request.grammar.as_ref().map(|_| ConstraintSpec {
                grammar: None,
                generated: Vec::new(),
            }),
        }
    }

    /// A sampled token reaches the client: the first after a re-plan reports the re-plan,
    /// then the token's logprobs and its text. Some(end): the request ends with it (or its
    /// client went away).
    async fn take_token(
        &self,
        state: &mut RequestState,
        token: u32,
        logprobs: Option<TokenLogprobs>,
    ) -> anyhow::Result<Option<EpochEnd>> {
        if let Some((noticed, mut replan)) = state.replanning.take() {
            replan.seconds = noticed.elapsed().as_secs_f64();
            tracing::info!(
                "{}: first token {:.3} s after the loss was noticed",
                self.wire_id,
                replan.seconds
            );
            state.replans.push(replan.clone());
            if self
                .events
                .send(GenerationEvent::Replanned(replan))
                .await
                .is_err()
            {
                return Ok(Some(EpochEnd::Cancelled));
            }
        }
        let counted = state.decoding.generated().len();
        let pushed = state.decoding.push(self.tokenizer, token)?;
        // A token the generation kept (not an end-of-sequence token) has its logprobs
        // reported before its text.
        if let Some(logprobs) = logprobs
            && state.decoding.generated().len() > counted
            && self
                .events
                .send(GenerationEvent::Logprobs(logprobs))
                .await
                .is_err()
        {
            return Ok(Some(EpochEnd::Cancelled));
        }
        let (text, finish) = match pushed {
            TokenOutcome::Continue(text) => (text, None),
            TokenOutcome::Finished(text, reason) => (text, Some(reason)),
        };
        if !text.is_empty() && self.events.send(GenerationEvent::Text(text)).await.is_err() {
            return Ok(Some(EpochEnd::Cancelled));
        }
        Ok(finish.map(EpochEnd::Finished))
    }

    /// Waits for the token of step `awaited`. `prefill`: the epoch's first token, after a
    /// prefill of that many tokens (the hard cap allows for the prefill and for loading
    /// the plan's weights). Ok(Err(end)): the epoch ends without a token.
    async fn await_token(
        &mut self,
        awaited: u64,
        prefill: Option<usize>,
        patience: Duration,
    ) -> anyhow::Result<Result<(u32, Option<TokenLogprobs>), EpochEnd>> {
        let config = &self.flow.config;
        let (wire_id, plan) = (&self.wire_id, self.plan);
        let started = Instant::now();
        let allowance = match prefill {
            Some(tokens) => config.load_allowance + config.prefill_time_per_token * tokens as u32,
            None => Duration::ZERO,
        };
        let hard_stop = started + patience + allowance + config.busy_cap;
        // Deadlines missed while every node answered: past the allowance for a first
        // token, a few in a row mean the results are lost on the way (see `MISSED_DEADLINES`).
        let mut missed = 0;
        let mut armed = started;
        loop {
            let expires = (armed + patience).min(hard_stop);
            let (for_step, outcome) = tokio::select! {
                outcome = self.results.recv() => outcome.context("the request's result channel closed")?,
                _ = tokio::time::sleep_until(expires.into()) => {
                    let reason = format!(
                        "no result for step {awaited} of {wire_id} after {:.1?} from the ring {}",
                        started.elapsed(),
                        describe(plan)
                    );
                    let progress = match self.check_ring(reason.clone()).await {
                        Ok(progress) => progress,
                        Err(lost) => return Ok(Err(EpochEnd::Interrupted(lost))),
                    };
                    if Instant::now() >= hard_stop {
                        return fail(FailureKind::TimedOut, format!("{reason}: every node answers, but the ring made no progress on this request"));
                    }
                    // Lost, not merely slow: a node passed the step on and the next never
                    // got it (the nodes say so, see `progress`), or nothing else keeps the
                    // ring busy — this origin waits for no other request and has no step
                    // of anyone's queued.
                    let lost_at = lost_message(plan, &progress, awaited, &self.flow.node_id);
                    if lost_at.is_some()
                        || (started.elapsed() >= allowance && self.flow.ring_looks_idle())
                    {
                        missed += 1;
                    }
                    if missed >= MISSED_DEADLINES {
                        let why = lost_at.unwrap_or_else(|| {
                            "every node answers, but no result came (lost on the way?)".into()
                        });
                        return Ok(Err(EpochEnd::Interrupted(Interruption {
                            kind: FailureKind::TimedOut,
                            ..Interruption::new(format!(
                                "{reason}: {why}; {missed} deadlines passed without it"
                            ))
                        })));
                    }
                    armed = Instant::now();
                    continue;
                }
                _ = self.events.closed() => return Ok(Err(EpochEnd::Cancelled)),
                (gone, draining) = member_lost(&mut self.joined, plan, &self.flow.node_id) => {
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
                StepOutcome::PrefixMiss(why) => return Ok(Err(EpochEnd::PrefixMiss(why))),
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

    /// After a missed deadline: the nodes of the plan that are gone, if any (Err), else
    /// how far each node got with the request (see `progress`). A slow ring is not a dead
    /// one (see `deadline`): only nodes that do not answer now (or whose engine does not
    /// serve) are lost, and this node itself when the plan gives it layers and its own
    /// engine fails its health check (peers cannot tell this origin that its engine hangs).
    async fn check_ring(&self, reason: String) -> Result<Vec<Option<Steps>>, Interruption> {
        let flow = self.flow;
        let (probe, engine_ok) =
            tokio::join!(flow.probe_ring(self.plan, &self.wire_id, &[]), async {
                !self.plan.entries.iter().any(|e| e.node_id == flow.node_id)
                    || flow.own_engine_answers().await
            });
        if engine_ok && probe.silent.is_empty() {
            return Ok(probe.progress);
        }
        let mut lost = probe.silent;
        let mut kind = FailureKind::PeerLost;
        let mut reason = reason;
        if !engine_ok {
            lost.push(flow.node_id.clone());
            kind = FailureKind::EngineFailed;
            reason = format!("{reason}: this node's own engine fails its health check");
        }
        Err(Interruption { lost, reason, kind })
    }

    /// A step for the plan's first shard: run here, or queued for that node. Err: this
    /// node (the first shard) refused it.
    async fn send(&self, context: ValidatedContext, tokens: Vec<u32>) -> Result<(), Interruption> {
        let flow = self.flow;
        let first = context.plan.entries[0].clone();
        if first.node_id == flow.node_id {
            let mut answers = flow
                .accept_steps(vec![(context, StepInput::Tokens(tokens))])
                .await;
            if let Some(Err(status)) = answers.pop() {
                return Err(Interruption::new(status.message().to_string()));
            }
            return Ok(());
        }
        let item = step_to_wire(&context, StepInput::Tokens(tokens));
        flow.send_to(&first.node_id, &first.address, Item::Step(item));
        Ok(())
    }
}

/// Deadlines that pass without a result while every node of the plan answers, and either
/// the nodes say a message of the step was lost on the way (`progress`) or nothing else
/// seems to keep the ring busy (a loaded ring, slow for everyone, is waited on: a
/// re-prefill would only load it more), after which the epoch ends and the request runs
/// again as a new one: a result lost on its way back, say by a link that works only one
/// way, is never sent again.
const MISSED_DEADLINES: u32 = 3;

impl Drop for Epoch<'_> {
    /// Results of this epoch that arrive late find nobody waiting (and are dropped).
    fn drop(&mut self) {
        self.flow.origin.stop_waiting(&self.wire_id);
    }
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
            // Every member: a group's followers as well as its leader.
            for node in plan.nodes().filter(|n| *n != self_id) {
                match peers.iter().find(|p| p.node_id == node) {
                    None => return (node.to_string(), false),
                    Some(peer) if peer.draining => return (node.to_string(), true),
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
