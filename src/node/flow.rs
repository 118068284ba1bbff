//! The flow of requests through the ring (DESIGN.md §4).
//!
//! On the origin (the node whose API received the request): plan the partition, send the
//! prompt's tokens to the first shard, wait for the last shard's token, stream its text,
//! send the token back to the first shard, until end of sequence, a stop string or the
//! token limit; then tell every node of the plan to drop the request.
//!
//! On every node of the plan: run its layers on what arrives, and pass the hidden state
//! on, or (on the last shard) sample and send the token to the origin. A failure on any
//! node goes back to the origin as an error result, so a request never hangs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::FutureExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::Status;

use crate::discovery::{PeerInfo, PeerTable};
use crate::engine::sampling::sample;
use crate::engine::{
    Decoding, FinishReason, InferenceEngine, LoadedModel, SamplingParams, ShardInput, ShardOutput,
    TokenOutcome,
};
use crate::peer::GrpcPeerHandle;
use crate::proto::{encode_hidden, pb};
use crate::resource::{Managed, ResourceState};
use crate::server::{NodeHandler, StepInput, StepOutcome, ValidatedContext};
use crate::topology::{DeviceCapabilities, NodeWeight, Partition, plan_partition};

/// Deadlines of the request flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowConfig {
    /// How long the origin waits for the token of one decoding step.
    pub step_timeout: Duration,
    /// Extra time per prompt token for the first step (the prompt's forward pass).
    pub prefill_time_per_token: Duration,
    /// Extra time for the first step, in which every node of the ring may have to load
    /// its shard's weights (one after another). A node that dies meanwhile still ends the
    /// request at once: it leaves the peer view.
    pub load_allowance: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            step_timeout: Duration::from_secs(4),
            prefill_time_per_token: Duration::from_millis(20),
            load_allowance: Duration::from_secs(60),
        }
    }
}

/// What the origin is asked to generate (the prompt is already tokenized).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

/// Timings and counts of a finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationSummary {
    pub request_id: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub partition: Partition,
}

impl GenerationSummary {
    pub fn decode_tok_s(&self) -> f64 {
        self.completion_tokens.saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// What the origin streams to whoever asked.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    /// Planned and sent on its way.
    Started {
        request_id: String,
        partition: Partition,
    },
    /// Text that is safe to show.
    Text(String),
    Finished(GenerationSummary),
    Failed(String),
}

/// How many finished request ids a node remembers, to refuse late steps of them.
const FINISHED_MEMORY: usize = 1024;

/// Counters for the admin API.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlowStats {
    pub requests_started: u64,
    pub requests_finished: u64,
    pub requests_failed: u64,
    pub requests_cancelled: u64,
    pub steps_run: u64,
    pub step_errors: u64,
}

/// One node's part in the request flow: the origin side and the shard side.
pub struct RequestFlow {
    node_id: String,
    /// The model this node serves (known before the engine is ready).
    model_id: String,
    /// This node's gRPC address as it puts it in plans (peers use their own view).
    address: RwLock<String>,
    /// The gRPC server's bound port (0 until it listens).
    grpc_port: Arc<std::sync::atomic::AtomicU16>,
    capabilities: DeviceCapabilities,
    engine: Arc<Managed<InferenceEngine>>,
    peers: Arc<PeerTable>,
    config: FlowConfig,
    /// Requests this node originated, waiting for step results.
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<(u64, StepOutcome)>>>,
    /// The last step of each request this node accepted, so that a retried message
    /// (its first copy arrived, its acknowledgement did not) does not run twice.
    accepted: Mutex<StepLedger>,
    finished: Mutex<VecDeque<String>>,
    stats: Mutex<FlowStats>,
    /// Steps run as tasks of their own, which need an owned reference.
    this: Weak<Self>,
}

impl RequestFlow {
    pub fn new(
        node_id: impl Into<String>,
        model_id: impl Into<String>,
        grpc_port: Arc<std::sync::atomic::AtomicU16>,
        capabilities: DeviceCapabilities,
        engine: Arc<Managed<InferenceEngine>>,
        peers: Arc<PeerTable>,
        config: FlowConfig,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| RequestFlow {
            this: this.clone(),
            node_id: node_id.into(),
            model_id: model_id.into(),
            address: RwLock::new("127.0.0.1".into()),
            grpc_port,
            capabilities,
            engine,
            peers,
            config,
            pending: Mutex::new(HashMap::new()),
            accepted: Mutex::new(StepLedger::default()),
            finished: Mutex::new(VecDeque::new()),
            stats: Mutex::new(FlowStats::default()),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The host part of this node's address in plans (informational: each node reaches
    /// the others at the addresses it discovered).
    pub fn set_host(&self, host: String) {
        *self.address.write().unwrap_or_else(|p| p.into_inner()) = host;
    }

    pub fn address(&self) -> String {
        let host = self
            .address
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        format!(
            "{host}:{}",
            self.grpc_port.load(std::sync::atomic::Ordering::Relaxed)
        )
    }

    pub fn capabilities(&self) -> &DeviceCapabilities {
        &self.capabilities
    }

    pub fn stats(&self) -> FlowStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, update: impl FnOnce(&mut FlowStats)) {
        update(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The engine's opened model, through `ensure_ready`.
    async fn model(&self) -> anyhow::Result<Arc<LoadedModel>> {
        self.engine.ensure_ready().await?.model()
    }

    /// The peers a plan may use now: Ready (not merely Degraded) and serving our model.
    fn usable_peers(&self, model_id: &str) -> Vec<PeerInfo> {
        self.peers
            .joined()
            .into_iter()
            .filter(|p| {
                p.state == ResourceState::Ready
                    && p.model_id == model_id
                    && p.capabilities.is_some()
            })
            .collect()
    }

    /// The partition for a request starting now: this node and the usable peers.
    pub async fn plan(&self) -> anyhow::Result<Partition> {
        let model = self.model().await?;
        self.plan_for(&model)
    }

    fn plan_for(&self, model: &LoadedModel) -> anyhow::Result<Partition> {
        let mut nodes = vec![NodeWeight {
            node_id: self.node_id.clone(),
            address: self.address(),
            memory_bytes: self.capabilities.model_memory_bytes(),
        }];
        for peer in self.usable_peers(model.model_id()) {
            nodes.push(NodeWeight {
                memory_bytes: peer
                    .capabilities
                    .as_ref()
                    .map_or(0, DeviceCapabilities::model_memory_bytes),
                node_id: peer.node_id,
                address: peer.address,
            });
        }
        plan_partition(model.model_id(), model.config().n_layers, &nodes)
    }

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
        let request_id = format!("req-{}", uuid::Uuid::new_v4().simple());
        let (results_tx, mut results) = mpsc::unbounded_channel();
        self.lock_pending().insert(request_id.clone(), results_tx);
        self.count(|s| s.requests_started += 1);
        let mut plan = None;
        let outcome = self
            .drive(&request_id, &request, &events, &mut results, &mut plan)
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
        let mut decoding = Decoding::new(max_tokens, request.stop.clone());
        let mut input = request.prompt.clone();
        let mut position = 0usize;
        let mut step = 0u64;
        let mut joined = self.peers.subscribe();
        let started = Instant::now();
        let mut first_token_at = None;
        loop {
            let context = ValidatedContext {
                request_id: request_id.to_string(),
                origin_node_id: self.node_id.clone(),
                origin_address: self.address(),
                plan: plan.clone(),
                index: 0,
                sampling: request.sampling,
                position,
                step,
            };
            let step_started = Instant::now();
            self.send_to_first_shard(context, input.clone()).await?;
            let deadline = if step == 0 {
                self.config.step_timeout
                    + self.config.load_allowance
                    + self.config.prefill_time_per_token * input.len() as u32
            } else {
                self.config.step_timeout
            };
            let expires = tokio::time::Instant::now() + deadline;
            let outcome = loop {
                let (for_step, outcome) = tokio::select! {
                    outcome = results.recv() => outcome.context("the request's result channel closed")?,
                    _ = tokio::time::sleep_until(expires) => bail!(
                        "no result for step {step} within {deadline:?}: a node of the ring ({}) is not answering",
                        describe(&plan)
                    ),
                    _ = events.closed() => return Ok(None),
                    gone = member_lost(&mut joined, &plan, &self.node_id) => bail!(
                        "node {gone} left the cluster during the request"
                    ),
                };
                // A result of another step is a late duplicate of a retried message.
                if for_step == step {
                    break outcome;
                }
                tracing::debug!(
                    "{request_id}: ignored a result of step {for_step} while at step {step}"
                );
            };
            let token = match outcome {
                StepOutcome::Token(token) => token,
                StepOutcome::Error(error) => bail!("{error}"),
            };
            tracing::debug!(
                "{request_id} step {step}: token after {:.2} ms",
                step_started.elapsed().as_secs_f64() * 1e3
            );
            first_token_at.get_or_insert_with(Instant::now);
            position += input.len();
            step += 1;
            let (text, finish) = match decoding.push(&tokenizer, token)? {
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
            input = vec![token];
        }
    }

    async fn send_to_first_shard(
        &self,
        context: ValidatedContext,
        tokens: Vec<u32>,
    ) -> anyhow::Result<()> {
        let first = &context.plan.entries[0];
        if first.node_id == self.node_id {
            self.accept_step(context, StepInput::Tokens(tokens))
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))
        } else {
            let handle = self.peer(&first.node_id, &first.address);
            let message = pb::PromptRequest {
                context: Some(to_wire(&context)),
                tokens,
            };
            handle
                .with_connection("SendPrompt", |peer| {
                    peer.send_prompt(message.clone()).boxed()
                })
                .await
        }
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

    async fn finish_local(&self, request_id: &str) {
        {
            let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            if finished.len() == FINISHED_MEMORY {
                finished.pop_front();
            }
            finished.push_back(request_id.to_string());
        }
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(request_id);
        self.drop_caches(request_id).await;
    }

    /// Drops every cache of `request_id` on this node, if the engine is up: an engine in
    /// trouble holds no cache worth starting it for.
    async fn drop_caches(&self, request_id: &str) {
        if self.engine.state().is_usable()
            && let Ok(model) = self.model().await
        {
            model.finish(request_id);
        }
    }

    fn is_finished(&self, request_id: &str) -> bool {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|id| id == request_id)
    }

    /// The handle on a node of a plan: from the peer table, or taken on at the address
    /// the plan gives when this node has not heard of it yet.
    fn peer(&self, node_id: &str, address: &str) -> Arc<Managed<GrpcPeerHandle>> {
        self.peers.adopt(node_id, address, &self.model_id)
    }

    /// Checks a step for this node's shard and starts it in the background (the caller
    /// gets its answer at once; the outcome travels on through the ring).
    async fn accept_step(&self, context: ValidatedContext, input: StepInput) -> Result<(), Status> {
        let model = self
            .model()
            .await
            .map_err(|e| Status::unavailable(format!("node {}: {e:#}", self.node_id)))?;
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
        if self.is_finished(&context.request_id) {
            return Err(Status::not_found(format!(
                "request {} has already finished",
                context.request_id
            )));
        }
        let entry = &context.plan.entries[context.index];
        if context.position > 0
            && !model.has_cache(&context.request_id, entry.start_layer, entry.end_layer)
        {
            return Err(Status::not_found(format!(
                "unknown request id {}: node {} has no cache for it at position {}",
                context.request_id, self.node_id, context.position
            )));
        }
        let this = self.this.upgrade().ok_or_else(|| {
            Status::unavailable(format!("node {} is shutting down", self.node_id))
        })?;
        let is_new = self
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(&context.request_id, context.step);
        if !is_new {
            tracing::debug!(
                "step {} of {} arrived again (a retried send): already running",
                context.step,
                context.request_id
            );
            return Ok(());
        }
        tokio::spawn(async move { this.execute_step(context, input).await });
        Ok(())
    }

    async fn execute_step(self: Arc<Self>, context: ValidatedContext, input: StepInput) {
        self.count(|s| s.steps_run += 1);
        if let Err(error) = self.run_shard(&context, input).await {
            self.count(|s| s.step_errors += 1);
            let message = format!("node {}: {error:#}", self.node_id);
            tracing::warn!(
                "step {} of {} failed: {message}",
                context.step,
                context.request_id
            );
            self.drop_caches(&context.request_id).await;
            self.deliver(&context, StepOutcome::Error(message)).await;
        }
    }

    async fn run_shard(&self, context: &ValidatedContext, input: StepInput) -> anyhow::Result<()> {
        let model = self.model().await?;
        let entry = context.plan.entries[context.index].clone();
        let input = match input {
            StepInput::Tokens(tokens) => ShardInput::Tokens(tokens),
            StepInput::Hidden(hidden) => ShardInput::Hidden(hidden),
        };
        let (request_id, position) = (context.request_id.clone(), context.position);
        let (start, end) = (entry.start_layer, entry.end_layer);
        let started = Instant::now();
        let output = tokio::task::spawn_blocking(move || {
            model.step(&request_id, start, end, input, position)
        })
        .await
        .context("the shard's task failed")??;
        tracing::debug!(
            "{} step {}: layers [{start}, {end}) in {:.2} ms",
            context.request_id,
            context.step,
            started.elapsed().as_secs_f64() * 1e3
        );
        match output {
            ShardOutput::Logits(logits) => {
                let token = sample(&logits, &context.sampling, context.step)?;
                self.deliver(context, StepOutcome::Token(token)).await;
                Ok(())
            }
            ShardOutput::Hidden(hidden) => {
                let next = context
                    .plan
                    .next(context.index)
                    .context("the last shard of the plan produced no logits")?;
                let mut next_context = context.clone();
                next_context.index += 1;
                let message = pb::TensorRequest {
                    context: Some(to_wire(&next_context)),
                    tensor: Some(encode_hidden(&hidden)),
                };
                let handle = self.peer(&next.node_id, &next.address);
                handle
                    .with_connection("SendTensor", |peer| {
                        peer.send_tensor(message.clone()).boxed()
                    })
                    .await
            }
        }
    }

    /// Sends a step's outcome to the request's origin.
    async fn deliver(&self, context: &ValidatedContext, outcome: StepOutcome) {
        if context.origin_node_id == self.node_id {
            if let Err(status) = self.route_result(&context.request_id, context.step, outcome) {
                // The request ended while this step ran (its client went away): its cache
                // was made after the request was finished here, so drop it now.
                tracing::debug!("{}", status.message());
                self.drop_caches(&context.request_id).await;
            }
            return;
        }
        let message = pb::ResultRequest {
            context: Some(to_wire(context)),
            node_id: self.node_id.clone(),
            outcome: Some(match outcome {
                StepOutcome::Token(token) => pb::result_request::Outcome::Token(token),
                StepOutcome::Error(error) => pb::result_request::Outcome::Error(error),
            }),
        };
        let sent = self
            .peer(&context.origin_node_id, &context.origin_address)
            .with_connection("SendResult", |peer| {
                peer.send_result(message.clone()).boxed()
            })
            .await;
        if let Err(error) = sent {
            // The origin is gone: nobody will finish this request, so drop it here.
            tracing::warn!(
                "cannot return a result of {} to its origin: {error:#}",
                context.request_id
            );
            self.drop_caches(&context.request_id).await;
        }
    }

    fn route_result(
        &self,
        request_id: &str,
        step: u64,
        outcome: StepOutcome,
    ) -> Result<(), Status> {
        let pending = self.lock_pending();
        let sender = pending.get(request_id).ok_or_else(|| {
            Status::not_found(format!(
                "unknown request id {request_id}: no such request is waiting here"
            ))
        })?;
        sender
            .send((step, outcome))
            .map_err(|_| Status::not_found(format!("request {request_id} is no longer waiting")))
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<(u64, StepOutcome)>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests in flight that this node originated.
    pub fn active_requests(&self) -> usize {
        self.lock_pending().len()
    }

    /// This node and its peers as `CollectTopology` reports them.
    pub async fn topology(&self) -> pb::TopologyResponse {
        let model_id = self.model_id.clone();
        let mut nodes = vec![pb::NodeInfo {
            node_id: self.node_id.clone(),
            address: self.address(),
            capabilities: Some(self.capabilities.to_wire()),
            model_id,
            link_state: "self".into(),
        }];
        for peer in self.peers.peers() {
            nodes.push(pb::NodeInfo {
                node_id: peer.node_id,
                address: peer.address,
                capabilities: peer.capabilities.as_ref().map(DeviceCapabilities::to_wire),
                model_id: peer.model_id,
                link_state: peer.state.to_string(),
            });
        }
        pb::TopologyResponse { nodes }
    }
}

#[tonic::async_trait]
impl NodeHandler for RequestFlow {
    fn node_id(&self) -> String {
        self.node_id.clone()
    }

    /// Serving while the engine is (or is getting) ready; an engine in Error or closed
    /// takes the node out of its peers' plans.
    fn is_serving(&self) -> bool {
        !matches!(
            self.engine.state(),
            ResourceState::Error | ResourceState::Closing | ResourceState::Closed
        )
    }

    async fn run_step(&self, context: ValidatedContext, input: StepInput) -> Result<(), Status> {
        self.accept_step(context, input).await
    }

    async fn step_result(
        &self,
        context: ValidatedContext,
        node_id: String,
        outcome: StepOutcome,
    ) -> Result<(), Status> {
        if let StepOutcome::Error(error) = &outcome {
            tracing::debug!(
                "node {node_id} reports a failed step of {}: {error}",
                context.request_id
            );
        }
        self.route_result(&context.request_id, context.step, outcome)
    }

    async fn topology(&self) -> Result<pb::TopologyResponse, Status> {
        Ok(RequestFlow::topology(self).await)
    }

    async fn status(&self, message: pb::StatusMessage) -> Result<(), Status> {
        tracing::debug!(
            "status from {} ({}): {} bytes",
            message.node_id,
            message.kind,
            message.payload.len()
        );
        Ok(())
    }

    async fn finish(&self, request_id: String, reason: String) -> Result<(), Status> {
        tracing::debug!("request {request_id} {reason}");
        self.finish_local(&request_id).await;
        Ok(())
    }
}

/// A request context as it travels.
pub fn to_wire(context: &ValidatedContext) -> pb::RequestContext {
    pb::RequestContext {
        request_id: context.request_id.clone(),
        origin_node_id: context.origin_node_id.clone(),
        origin_address: context.origin_address.clone(),
        plan: Some(context.plan.to_wire()),
        sampling: Some(pb::SamplingParams {
            temperature: context.sampling.temperature,
            top_p: context.sampling.top_p,
            top_k: context.sampling.top_k as u32,
            seed: context.sampling.seed,
        }),
        position: context.position as u32,
        step: context.step,
    }
}

/// "a[0,10) → b[10,20) → c[20,30)"
pub fn describe(plan: &Partition) -> String {
    plan.entries
        .iter()
        .map(|e| format!("{}[{},{})", e.node_id, e.start_layer, e.end_layer))
        .collect::<Vec<_>>()
        .join(" → ")
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

/// The last step of each request this node accepted, bounded (the oldest requests are
/// forgotten first).
#[derive(Default)]
struct StepLedger {
    last: HashMap<String, u64>,
    order: VecDeque<String>,
}

impl StepLedger {
    const CAPACITY: usize = 4096;

    /// Whether `step` of `request_id` is new here (and records it).
    fn accept(&mut self, request_id: &str, step: u64) -> bool {
        match self.last.get_mut(request_id) {
            Some(last) if *last >= step => false,
            Some(last) => {
                *last = step;
                true
            }
            None => {
                if self.order.len() == Self::CAPACITY
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.last.remove(&oldest);
                }
                self.order.push_back(request_id.to_string());
                self.last.insert(request_id.to_string(), step);
                true
            }
        }
    }

    fn forget(&mut self, request_id: &str) {
        self.last.remove(request_id);
    }
}
