//! The origin's side of a request: plan it, send its prompt through the ring in chunks,
//! then one step per token, stream the text, and tell every node when it is over.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::outbox::Item;
use super::{GenerateRequest, GenerationEvent, GenerationSummary, RequestFlow, describe, to_wire};
use crate::discovery::PeerInfo;
use crate::engine::{Decoding, TokenOutcome};
use crate::proto::pb;
use crate::server::{StepInput, StepOutcome, ValidatedContext};
use crate::topology::Partition;

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
        let (results_tx, mut results) = mpsc::unbounded_channel();
        self.lock_pending().insert(request_id.clone(), results_tx);
        self.count(|s| s.requests_started += 1);
        let mut plan = None;
        // Everything logged on this node about the request names it (the peers get the id
        // in each call's metadata, see `crate::proto::request_ids`).
        let span = tracing::info_span!("request", id = %request_id);
        let outcome = self
            .drive(&request_id, &request, &events, &mut results, &mut plan)
            .instrument(span)
            .await;
        self.lock_pending().remove(&request_id);
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
        if let Some(plan) = plan {
            self.finish_everywhere(&request_id, &plan, reason).await;
        }
    }

    /// The origin's loop. Ok(None): the client went away.
    async fn drive(
        &self,
        request_id: &str,
        request: &GenerateRequest,
        events: &mpsc::Sender<GenerationEvent>,
        results: &mut mpsc::UnboundedReceiver<(u64, StepOutcome)>,
        plan_slot: &mut Option<Partition>,
    ) -> anyhow::Result<Option<GenerationSummary>> {
        if request.prompt.is_empty() {
            bail!("the prompt is empty");
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
        let plan = self.plan_for(&model)?;
        tracing::debug!(
            "planned: {} prompt tokens on {}",
            request.prompt.len(),
            describe(&plan)
        );
        *plan_slot = Some(plan.clone());
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
        let reserve_positions = request.prompt.len() + max_tokens;
        let mut decoding =
            Decoding::new(max_tokens, request.stop.clone()).ignoring_eos(request.ignore_eos);
        let mut joined = self.peers.subscribe();
        let started = Instant::now();
        let mut first_token_at = None;
        let context =
            |step: u64, position: usize, sample: bool, token_index: u64| ValidatedContext {
                request_id: request_id.to_string(),
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
        // The prompt, in chunks the shards can interleave with other requests' steps;
        // only the last chunk's logits are sampled.
        let chunk = self.config.prefill_chunk.max(1);
        let mut step = 0u64;
        let mut position = 0usize;
        let chunks: Vec<&[u32]> = request.prompt.chunks(chunk).collect();
        for (i, tokens) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.send_to_first_shard(context(step, position, last, 0), tokens.to_vec())
                .await?;
            position += tokens.len();
            step += 1;
        }
        let mut awaited = step - 1;
        loop {
            let step_started = Instant::now();
            // The deadline runs from the ring's last progress, and grows with how long
            // steps take here lately: a busy ring working through other requests' steps
            // is not a ring that stopped answering (see `progress`).
            let first = first_token_at.is_none();
            let deadline = || {
                let patience = self
                    .progress
                    .patience(self.config.step_timeout, plan.entries.len());
                if first {
                    patience
                        + self.config.load_allowance
                        + self.config.prefill_time_per_token * request.prompt.len() as u32
                } else {
                    patience
                }
            };
            let armed = Instant::now();
            let cap = deadline() + self.config.busy_cap;
            let outcome = loop {
                let expires = self.progress.expiry(armed, deadline(), cap);
                let (for_step, outcome) = tokio::select! {
                    outcome = results.recv() => outcome.context("the request's result channel closed")?,
                    _ = tokio::time::sleep_until(expires.into()) => {
                        let deadline = deadline();
                        if self.progress.expiry(armed, deadline, cap) > expires {
                            continue;
                        }
                        bail!(
                            "no result for step {awaited} within {:.1?} ({deadline:.1?} without progress): a node of the ring ({}) is not answering",
                            armed.elapsed(),
                            describe(&plan)
                        )
                    }
                    _ = events.closed() => return Ok(None),
                    gone = member_lost(&mut joined, &plan, &self.node_id) => bail!(
                        "node {gone} left the cluster during the request"
                    ),
                };
                match outcome {
                    StepOutcome::Error(error) => bail!("{error}"),
                    // A prompt chunk made it through, or a late duplicate of a retried
                    // message: nothing to do but wait on.
                    _ if for_step != awaited => {
                        tracing::debug!(
                            "{request_id}: result of step {for_step} while awaiting {awaited}"
                        );
                    }
                    StepOutcome::Done => {}
                    StepOutcome::Token(token, logprobs) => break (token, logprobs),
                }
            };
            let (token, logprobs) = outcome;
            tracing::debug!(
                "{request_id} step {awaited}: token after {:.2} ms",
                step_started.elapsed().as_secs_f64() * 1e3
            );
            first_token_at.get_or_insert_with(Instant::now);
            let counted = decoding.generated().len();
            let pushed = decoding.push(&tokenizer, token)?;
            // A token the generation kept (not an end-of-sequence token) has its logprobs
            // reported before its text.
            if let Some(logprobs) = logprobs
                && decoding.generated().len() > counted
                && events
                    .send(GenerationEvent::Logprobs(logprobs))
                    .await
                    .is_err()
            {
                return Ok(None);
            }
            let (text, finish) = match pushed {
                TokenOutcome::Continue(text) => (text, None),
                TokenOutcome::Finished(text, reason) => (text, Some(reason)),
            };
            if !text.is_empty() && events.send(GenerationEvent::Text(text)).await.is_err() {
                return Ok(None);
            }
            if let Some(finish) = finish {
                let first = first_token_at.unwrap_or(started);
                return Ok(Some(GenerationSummary {
                    request_id: request_id.to_string(),
                    finish,
                    prompt_tokens: request.prompt.len(),
                    completion_tokens: decoding.generated().len(),
                    prefill_seconds: (first - started).as_secs_f64(),
                    decode_seconds: first.elapsed().as_secs_f64(),
                    partition: plan,
                }));
            }
            let token_index = decoding.generated().len() as u64;
            self.send_to_first_shard(context(step, position, true, token_index), vec![token])
                .await?;
            awaited = step;
            position += 1;
            step += 1;
        }
    }

    /// A step for the plan's first shard: run here, or queued for that node.
    async fn send_to_first_shard(
        &self,
        context: ValidatedContext,
        tokens: Vec<u32>,
    ) -> anyhow::Result<()> {
        let first = context.plan.entries[0].clone();
        if first.node_id == self.node_id {
            let mut answers = self
                .accept_steps(vec![(context, StepInput::Tokens(tokens))])
                .await;
            if let Some(Err(status)) = answers.pop() {
                bail!("{}", status.message());
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

/// Resolves when a node of `plan` (other than `self_id`) is no longer a joined peer.
async fn member_lost(
    joined: &mut tokio::sync::watch::Receiver<Vec<PeerInfo>>,
    plan: &Partition,
    self_id: &str,
) -> String {
    loop {
        {
            let peers = joined.borrow_and_update();
            if let Some(gone) = plan
                .entries
                .iter()
                .find(|e| e.node_id != self_id && !peers.iter().any(|p| p.node_id == e.node_id))
            {
                return gone.node_id.clone();
            }
        }
        if joined.changed().await.is_err() {
            // The peer table is gone (shutdown): let the step deadline decide.
            std::future::pending::<()>().await;
        }
    }
}
