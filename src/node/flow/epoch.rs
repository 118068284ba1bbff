//! One epoch of a request on the origin: the prompt and every token generated so far go
//! through the plan's ring as a prefill, then one step per token; each step's wait
//! notices a lost node (it left, drains, does not answer a health check) and ends the
//! epoch so that the origin can plan again (`continuation`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;

use super::continuation::{Interruption, Replan};
use super::deadline::StepTimes;
use super::outbox::Item;
use super::{GenerateRequest, GenerationEvent, RequestFlow, describe};
use crate::discovery::PeerInfo;
use crate::engine::serve::sampling::TokenLogprobs;
use crate::engine::text::tokenizer::TextTokenizer;
use crate::engine::{Decoding, FinishReason, TokenOutcome};
use crate::proto::{StepInput, StepOutcome, ValidatedContext, step_to_wire};
use crate::resource::Resource;
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
}

/// How an epoch of a request ended.
pub(super) enum EpochEnd {
    Finished(FinishReason),
    /// The client went away.
    Cancelled,
    /// A node was lost (or a step failed): plan again and go on.
    Interrupted(Interruption),
}

impl RequestFlow {
    /// Runs one epoch of a request over `plan`: the prompt and every token generated so
    /// far go through the ring as a prefill (in chunks), whose last row samples the next
    /// token; then one step per token until the request ends or the epoch is interrupted.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_epoch(
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
    pub(super) async fn unresponsive(&self, plan: &Partition, known: &[String]) -> Vec<String> {
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
        let item = step_to_wire(&context, StepInput::Tokens(tokens));
        self.send_to(&first.node_id, &first.address, Item::Step(item));
        Ok(())
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
