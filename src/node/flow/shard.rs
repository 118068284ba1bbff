//! A node's side of other requests' steps: check what arrives, queue it on the engine's
//! batcher, and send each finished batch's outputs on — hidden states to the next node,
//! tokens (or the end of a prompt chunk, or an error) to the request's origin.

use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tonic::Status;

use super::RequestFlow;
use super::outbox::{Item, OnFailure};
use crate::engine::group::GroupPlacement;
use crate::engine::model::shard_io::{ShardInput, ShardOutput};
use crate::engine::serve::batcher::{BatchPanicked, StepDone, StepJob};
use crate::engine::serve::prefix_cache::PrefixMiss;
use crate::engine::serve::sampling::{TokenLogprobs, logprobs, sample};
use crate::proto::{StepInput, StepOutcome, ValidatedContext, result_to_wire, step_to_wire};

impl RequestFlow {
    /// The flow's task that takes the batches the engine finished.
    pub(super) async fn take_finished_batches(
        flow: Weak<RequestFlow>,
        mut batches: mpsc::UnboundedReceiver<Vec<StepDone>>,
    ) {
        while let Some(done) = batches.recv().await {
            let Some(flow) = flow.upgrade() else { return };
            flow.batch_finished(done);
        }
    }

    /// The request is over on this node: its later steps are refused and its caches
    /// dropped, after the blocks `keep` names are kept in the prefix cache. Returns how
    /// many leading blocks of `keep` the prefix cache now holds.
    pub(super) async fn finish_local(&self, request_id: &str, keep: &[u64]) -> usize {
        self.shard.finish(request_id);
        if keep.is_empty() {
            self.drop_caches(request_id).await;
            return 0;
        }
        match self.model().await {
            Ok(model) if self.engine.state().is_usable() => {
                let (model, id, keep) = (model.clone(), request_id.to_string(), keep.to_vec());
                // Cutting the blocks copies memory: off the async workers.
                tokio::task::spawn_blocking(move || model.finish_keeping(&id, &keep))
                    .await
                    .unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Drops every cache of `request_id` on this node, if the engine is up: an engine in
    /// trouble holds no cache worth starting it for.
    pub(super) async fn drop_caches(&self, request_id: &str) {
        if self.engine.state().is_usable()
            && let Ok(model) = self.model().await
        {
            model.finish(request_id);
        }
    }

    /// Checks steps for this node's shard and queues them on the batcher; each caller gets
    /// its answer at once, the outcome travels on through the ring.
    pub(super) async fn accept_steps(
        &self,
        steps: Vec<(ValidatedContext, StepInput)>,
    ) -> Vec<Result<(), Status>> {
        self.await_vouches(steps.iter().map(|(context, _)| context))
            .await;
        let model = match self.model().await {
            Ok(model) => model,
            Err(error) => {
                let message = format!("node {}: {error:#}", self.node_id);
                return steps
                    .iter()
                    .map(|_| Err(Status::unavailable(message.clone())))
                    .collect();
            }
        };
        let mut answers = Vec::with_capacity(steps.len());
        for (context, input) in steps {
            // A group this node leads: its links open and its placement, before the step
            // is checked and queued.
            let entry = &context.plan.entries[context.index];
            let group = if entry.followers.is_empty() {
                None
            } else if let Err(refused) = self.check_plan_nodes(&context) {
                answers.push(Err(refused));
                continue;
            } else {
                match self.lead(&model, entry).await {
                    Ok(placement) => Some(placement),
                    Err(error) => {
                        answers.push(Err(Status::unavailable(format!(
                            "node {} cannot lead its tensor-parallel group: {error:#}",
                            self.node_id
                        ))));
                        continue;
                    }
                }
            };
            answers.push(self.accept_step(&model, context, input, group));
        }
        answers
    }

    fn accept_step(
        &self,
        model: &Arc<crate::engine::LoadedModel>,
        context: ValidatedContext,
        input: StepInput,
        group: Option<Arc<GroupPlacement>>,
    ) -> Result<(), Status> {
        if context.plan.model_id != model.model_id()
            || context.plan.n_layers != model.config().n_layers
        {
            return Err(Status::invalid_argument(format!(
                "request {} is for model {} ({} layers); node {} serves {} ({} layers)",
                context.request_id,
                context.plan.model_id,
                context.plan.n_layers,
                self.node_id,
                model.model_id(),
                model.config().n_layers
            )));
        }
        self.check_plan_nodes(&context)?;
        if self.shard.is_finished(&context.request_id) {
            return Err(Status::not_found(format!(
                "request {} has already finished",
                context.request_id
            )));
        }
        // A draining node finishes what it has but takes on no new request: its origin
        // plans without it (this node's announcements say it is draining).
        if self.is_draining()
            && context.origin_node_id != self.node_id
            && !self.shard.knows(&context.request_id)
        {
            self.count(|s| s.refused_draining += 1);
            return Err(Status::unavailable(format!(
                "node {} is draining and takes no new requests ({})",
                self.node_id, context.request_id
            )));
        }
        let is_new = self.shard.accept(&context.request_id, context.step);
        if !is_new {
            tracing::debug!(
                "step {} of {} arrived again (a retried send): already queued",
                context.step,
                context.request_id
            );
            return Ok(());
        }
        if let Err(error) = self.shard.constraints.arrived(model, &context) {
            return Err(Status::invalid_argument(format!(
                "request {}: its grammar cannot be used: {error:#}",
                context.request_id
            )));
        }
        let entry = &context.plan.entries[context.index];
        let job = StepJob {
            request_id: context.request_id.clone(),
            start: entry.start_layer,
            end: entry.end_layer,
            input: match input {
                StepInput::Tokens(tokens) => ShardInput::Tokens(tokens),
                StepInput::Hidden(hidden) => ShardInput::Hidden(hidden),
            },
            position: context.position,
            reserve_positions: context.reserve_positions,
            prefix: context.prefix_blocks.clone(),
            tag: self.shard.next_tag(),
            sink: self.shard.completions.clone(),
            group,
        };
        let (context_id, step) = (context.request_id.clone(), context.step);
        self.shard.queued(job.tag, context);
        self.count(|s| s.steps_run += 1);
        let layers = job.start..job.end;
        let Some(supply) = self.supply() else {
            model.submit(job);
            return Ok(());
        };
        // Steps of a range whose weights are not here yet wait for one fetch, in the
        // order they came (`layer_wait`); the caller has its answer already.
        let first_to_wait = self.shard.layer_waits.submit_or_wait(
            &layers,
            || supply.ready_for(&layers),
            (model.clone(), job),
            |(model, job)| model.submit(job),
        );
        if first_to_wait {
            tracing::info!(
                "{}: step {} waits for the weights of layers {}..{}",
                context_id,
                step,
                layers.start,
                layers.end
            );
            let (supply, this) = (supply.clone(), self.this.clone());
            tokio::spawn(async move {
                let outcome = supply.ensure_layers(layers.clone()).await;
                let Some(flow) = this.upgrade() else { return };
                let failed =
                    flow.shard
                        .layer_waits
                        .fetch_ended(&layers, outcome.is_ok(), |(model, job)| model.submit(job));
                if let Err(error) = outcome {
                    for (_, job) in failed {
                        if let Some(context) = flow.shard.take(job.tag) {
                            flow.fail_step(&context, format!("{error:#}"));
                        }
                    }
                }
            });
        }
        Ok(())
    }

    /// Sends each output of a finished batch where it goes next.
    fn batch_finished(&self, done: Vec<StepDone>) {
        for step in done {
            let Some(context) = self.shard.take(step.tag) else {
                continue;
            };
            match step.output {
                Ok(ShardOutput::Logits(mut logits)) => {
                    let outcome = if !context.sample {
                        StepOutcome::Done
                    } else {
                        match self.pick(&context, &mut logits) {
                            Ok((token, logprobs)) => StepOutcome::Token(token, logprobs),
                            Err(error) => {
                                StepOutcome::Error(format!("node {}: {error:#}", self.node_id))
                            }
                        }
                    };
                    self.deliver(&context, outcome);
                }
                Ok(ShardOutput::Hidden(hidden)) => match context.plan.next(context.index) {
                    Some(next) => {
                        let next = next.clone();
                        let mut next_context = context.clone();
                        next_context.index += 1;
                        let item = step_to_wire(&next_context, StepInput::Hidden(hidden));
                        self.shard.passed(&context.request_id, context.step);
                        self.send_to(&next.node_id, &next.address, Item::Step(item));
                    }
                    None => self.fail_step(
                        &context,
                        "the last shard of the plan produced no logits".into(),
                    ),
                },
                Err(error) if error.is::<PrefixMiss>() => {
                    self.count(|s| s.prefix_misses += 1);
                    let message = format!("node {}: {error:#}", self.node_id);
                    tracing::info!("{}: {message}", context.request_id);
                    self.deliver(&context, StepOutcome::PrefixMiss(message));
                }
                Err(error) => {
                    // A panic in the engine puts the engine in question, not the request:
                    // the engine is marked degraded (its health check decides whether it
                    // recovers) and the origin re-plans on the error.
                    if error.downcast_ref::<BatchPanicked>().is_some() {
                        self.engine.report_problem(format!("{error:#}"));
                    }
                    self.fail_step(&context, format!("node {}: {error:#}", self.node_id))
                }
            }
        }
    }

    /// Samples the next token of `context` from its logits (masked first by its grammar,
    /// when it has one), with its logprobs when asked for.
    fn pick(
        &self,
        context: &ValidatedContext,
        logits: &mut [f32],
    ) -> anyhow::Result<(u32, Option<TokenLogprobs>)> {
        let constraints = &self.shard.constraints;
        constraints.mask(context, logits)?;
        let token = sample(logits, &context.sampling, context.token_index)?;
        constraints.accept(context, token)?;
        with_logprobs(logits, token, context.top_logprobs)
    }

    /// Reports a failed step to its origin and drops what the request holds here.
    fn fail_step(&self, context: &ValidatedContext, message: String) {
        self.shard.constraints.forget(&context.request_id);
        self.count(|s| s.step_errors += 1);
        tracing::warn!(
            "step {} of {} failed: {message}",
            context.step,
            context.request_id
        );
        if let Some(this) = self.this.upgrade() {
            let request_id = context.request_id.clone();
            tokio::spawn(async move { this.drop_caches(&request_id).await });
        }
        self.deliver(context, StepOutcome::Error(message));
    }

    /// Sends a step's outcome to the request's origin.
    fn deliver(&self, context: &ValidatedContext, outcome: StepOutcome) {
        self.shard.passed(&context.request_id, context.step);
        if context.origin_node_id == self.node_id {
            if let Err(status) = self
                .origin
                .route(&context.request_id, context.step, outcome)
            {
                // The request ended while this step ran (its client went away): its cache
                // was made after the request was finished here, so drop it now.
                tracing::debug!("{}", status.message());
                if let Some(this) = self.this.upgrade() {
                    let request_id = context.request_id.clone();
                    tokio::spawn(async move { this.drop_caches(&request_id).await });
                }
            }
            return;
        }
        if self.faults().is_some_and(|f| f.drops_result()) {
            tracing::warn!(
                "fault injected: a result of {} to {} is lost",
                context.request_id,
                context.origin_node_id
            );
            return;
        }
        let item = result_to_wire(context.to_wire_for_result(), self.node_id.clone(), outcome);
        self.send_to(
            &context.origin_node_id,
            &context.origin_address,
            Item::Result(item),
        );
    }

    /// What the outbox calls with items it could not deliver (see
    /// [`RequestFlow::undelivered`]).
    pub(super) fn on_undelivered(this: Weak<Self>) -> OnFailure {
        Arc::new(move |failed: Vec<(Item, String)>| {
            if let Some(flow) = this.upgrade() {
                flow.undelivered(failed);
            }
        })
    }

    /// Items a peer refused or that could not reach it: a step becomes an error result to
    /// its origin; a result whose origin is gone leaves nobody to finish the request, so
    /// its caches here are dropped.
    pub(super) fn undelivered(&self, failed: Vec<(Item, String)>) {
        for (item, reason) in failed {
            match item {
                Item::Step(step) => {
                    let Some(context) = step.context else {
                        continue;
                    };
                    self.count(|s| s.step_errors += 1);
                    let message = format!(
                        "a step of {} could not be handed on: {reason}",
                        context.request_id
                    );
                    tracing::warn!("{message}");
                    if let Some(this) = self.this.upgrade() {
                        let request_id = context.request_id.clone();
                        tokio::spawn(async move { this.drop_caches(&request_id).await });
                    }
                    if context.origin_node_id == self.node_id {
                        let _ = self.origin.route(
                            &context.request_id,
                            context.step,
                            StepOutcome::Error(message),
                        );
                    } else {
                        let origin = (
                            context.origin_node_id.clone(),
                            context.origin_address.clone(),
                        );
                        let item = result_to_wire(
                            context,
                            self.node_id.clone(),
                            StepOutcome::Error(message),
                        );
                        self.send_to(&origin.0, &origin.1, Item::Result(item));
                    }
                }
                Item::Result(result) => {
                    let Some(context) = result.context else {
                        continue;
                    };
                    tracing::warn!(
                        "cannot return a result of {} to its origin: {reason}",
                        context.request_id
                    );
                    if let Some(this) = self.this.upgrade() {
                        tokio::spawn(async move { this.drop_caches(&context.request_id).await });
                    }
                }
            }
        }
    }
}

/// The sampled token, with its logprobs when the request asked for them (computed here,
/// on the node that holds the logits, from the same logits the token was drawn from).
fn with_logprobs(
    logits: &[f32],
    token: u32,
    top_logprobs: Option<u32>,
) -> anyhow::Result<(u32, Option<TokenLogprobs>)> {
    match top_logprobs {
        None => Ok((token, None)),
        Some(k) => Ok((token, Some(logprobs(logits, token, k as usize)?))),
    }
}
