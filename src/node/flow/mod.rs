//! The flow of requests through the ring (DESIGN.md §4).
//!
//! On the origin (the node whose API received the request; [`origin`]): plan the
//! partition ([`plan`]), send the prompt's chunks to the first shard, wait for the last
//! shard's token, stream its text, send the token back to the first shard, until end of
//! sequence, a stop string or the token limit; then tell every node of the plan to drop
//! the request.
//!
//! On every node of the plan ([`shard`]): queue what arrives for the engine's batcher,
//! which runs the steps that are ready together; pass the outputs on to the next node, or
//! (on the last shard) sample and send the tokens to their origins. Everything bound for
//! one peer travels together ([`outbox`]). A failure on any node goes back to the origin
//! as an error result, so a request never hangs.

mod continuation;
mod deadline;
mod drain;
mod epoch;
mod ledger;
mod origin;
mod outbox;
mod plan;
mod shard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tonic::Status;

use crate::discovery::PeerTable;
use crate::engine::{FinishReason, InferenceEngine, LoadedModel, SamplingParams};
use crate::proto::pb;
use crate::proto::{StepInput, StepOutcome, ValidatedContext};
use crate::resource::{Managed, ResourceState};
use crate::server::NodeHandler;
use crate::topology::{DeviceCapabilities, Partition};

pub use origin::new_request_id;

use continuation::LossRecord;
pub use continuation::{Flapping, Replan};
pub use drain::DrainStatus;
use ledger::{Finished, StepLedger};
use outbox::Outbox;

/// Deadlines and retries of the request flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowConfig {
    /// How long the origin waits for a step's result before it health-checks the plan's
    /// nodes: the floor of a deadline that follows the request's measured step times (see
    /// `deadline`). Nodes that do not answer are lost and the request is planned again;
    /// when all answer, it waits on.
    pub step_timeout: Duration,
    /// Extra time per prompt token for an epoch's first token (the prefill), before the
    /// request gives up on a ring whose nodes all answer but never serve it.
    pub prefill_time_per_token: Duration,
    /// Extra time for an epoch's first token, in which every node of the ring may have to
    /// load (or fetch) its shard's weights. Nodes that die meanwhile are still noticed at
    /// once: only the hard cap grows.
    pub load_allowance: Duration,
    /// The longest a step may wait while every node of its plan answers health checks: a
    /// ring that is alive but never serves this request still fails it.
    pub busy_cap: Duration,
    /// Prompt tokens per step: longer prompts go through the ring in chunks, which the
    /// shards interleave with other requests' decoding.
    pub prefill_chunk: usize,
    /// How many times one request may be planned again after losing nodes, before it
    /// fails.
    pub max_replans: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            step_timeout: Duration::from_millis(250),
            prefill_time_per_token: Duration::from_millis(20),
            load_allowance: Duration::from_secs(60),
            busy_cap: Duration::from_secs(300),
            prefill_chunk: 256,
            max_replans: 3,
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
    /// Go on past end-of-sequence tokens, to exactly `max_tokens` (benchmarks).
    pub ignore_eos: bool,
    /// Some(k): report each generated token's logprob and its k most likely
    /// alternatives (as [`GenerationEvent::Logprobs`]).
    pub top_logprobs: Option<u32>,
    /// The id the request goes by on every node (in logs and gRPC metadata); the origin
    /// makes one when empty.
    pub request_id: Option<String>,
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
    /// The plan of the last epoch.
    pub partition: Partition,
    /// Each time the request was planned again after losing nodes.
    pub replans: Vec<Replan>,
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
    /// A node of the plan was lost and the request goes on over a new plan (sent with
    /// the first token of the new epoch).
    Replanned(Replan),
    /// Text that is safe to show.
    Text(String),
    /// The logprobs of a generated token (only when asked for), sent before the text that
    /// token completes; end-of-sequence tokens have none.
    Logprobs(crate::engine::serve::sampling::TokenLogprobs),
    Finished(GenerationSummary),
    Failed(String),
}

/// Counters for the admin API.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlowStats {
    pub requests_started: u64,
    pub requests_finished: u64,
    pub requests_failed: u64,
    pub requests_cancelled: u64,
    pub steps_run: u64,
    pub step_errors: u64,
    /// Steps and results refused for naming a node that has not proven the cluster key.
    pub plans_refused: u64,
    /// Requests planned again after losing a node (each re-plan counts).
    pub replans: u64,
    /// Steps of new requests refused while this node drains.
    pub refused_draining: u64,
}

/// What a request's origin receives: (step, outcome).
type ResultSender = mpsc::UnboundedSender<(u64, StepOutcome)>;

/// One node's part in the request flow: the origin side and the shard side.
pub struct RequestFlow {
    node_id: String,
    /// The model this node serves (known before the engine is ready).
    model_id: String,
    /// This node's gRPC address as it puts it in plans (peers use their own view).
    address: RwLock<String>,
    /// The gRPC server's bound port (0 until it listens).
    grpc_port: Arc<AtomicU16>,
    capabilities: DeviceCapabilities,
    engine: Arc<Managed<InferenceEngine>>,
    peers: Arc<PeerTable>,
    config: FlowConfig,
    /// Requests this node originated, waiting for step results.
    pending: Mutex<HashMap<String, ResultSender>>,
    /// Steps queued on the engine's batcher, by the tag they were queued with.
    running: Mutex<HashMap<u64, (ValidatedContext, std::time::Instant)>>,
    next_tag: AtomicU64,
    /// Where the batcher hands finished batches (a task of this flow takes them).
    completions: mpsc::UnboundedSender<Vec<crate::engine::serve::batcher::StepDone>>,
    /// Everything bound for peers.
    outbox: Outbox,
    /// The last step of each request this node accepted, so that a retried message (its
    /// first copy arrived, its acknowledgement did not) does not run twice.
    accepted: Mutex<StepLedger>,
    finished: Mutex<Finished>,
    stats: Mutex<FlowStats>,
    /// Nodes lost recently: flapping ones are left out of new plans.
    losses: LossRecord,
    /// Set by a drain: no new plans here, no steps of new requests.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the node's main loop when the API asks for a drain.
    drain_requested: tokio::sync::Notify,
    /// Steps run as tasks of their own, which need an owned reference.
    this: Weak<Self>,
    /// Where the weights of a planned range come from when they are not here yet (a node
    /// serving a registry model); also serves this node's weights to its peers.
    supply: std::sync::OnceLock<Arc<crate::supply::WeightSupply>>,
}

impl RequestFlow {
    pub fn new(
        node_id: impl Into<String>,
        model_id: impl Into<String>,
        grpc_port: Arc<AtomicU16>,
        capabilities: DeviceCapabilities,
        engine: Arc<Managed<InferenceEngine>>,
        peers: Arc<PeerTable>,
        config: FlowConfig,
    ) -> Arc<Self> {
        let (completions, finished_batches) = mpsc::unbounded_channel();
        let flow = Arc::new_cyclic(|this: &Weak<Self>| {
            let on_failure = {
                let this = this.clone();
                Arc::new(move |failed: Vec<(outbox::Item, String)>| {
                    if let Some(flow) = this.upgrade() {
                        flow.undelivered(failed);
                    }
                }) as outbox::OnFailure
            };
            RequestFlow {
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
                running: Mutex::new(HashMap::new()),
                next_tag: AtomicU64::new(1),
                completions,
                outbox: Outbox::new(on_failure),
                accepted: Mutex::new(StepLedger::default()),
                finished: Mutex::new(Finished::default()),
                stats: Mutex::new(FlowStats::default()),
                losses: LossRecord::default(),
                draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                drain_requested: tokio::sync::Notify::new(),
                supply: std::sync::OnceLock::new(),
            }
        });
        tokio::spawn(shard::take_finished_batches(
            Arc::downgrade(&flow),
            finished_batches,
        ));
        flow
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

    /// Sets the node's weight supply (once, before the node serves).
    pub fn set_supply(&self, supply: Arc<crate::supply::WeightSupply>) {
        let _ = self.supply.set(supply);
    }

    pub fn supply(&self) -> Option<&Arc<crate::supply::WeightSupply>> {
        self.supply.get()
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

    /// Requests in flight that this node originated.
    pub fn active_requests(&self) -> usize {
        self.lock_pending().len()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, ResultSender>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a step's outcome to the origin's waiting loop.
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

    /// This node and its peers as `CollectTopology` reports them.
    pub async fn topology(&self) -> pb::TopologyResponse {
        let model_id = self.model_id.clone();
        let mut nodes = vec![pb::NodeInfo {
            node_id: self.node_id.clone(),
            address: self.address(),
            capabilities: Some(self.capabilities.to_wire()),
            model_id,
            link_state: "self".into(),
            holdings: self
                .supply()
                .and_then(|s| s.holding())
                .into_iter()
                .collect(),
        }];
        for peer in self.peers.peers() {
            nodes.push(pb::NodeInfo {
                node_id: peer.node_id,
                address: peer.address,
                capabilities: peer.capabilities.as_ref().map(DeviceCapabilities::to_wire),
                model_id: peer.model_id,
                link_state: peer.state.to_string(),
                holdings: Vec::new(),
            });
        }
        pb::TopologyResponse { nodes }
    }

    fn is_finished(&self, request_id: &str) -> bool {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(request_id)
    }

    async fn finish_local(&self, request_id: &str) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id);
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

    /// The flow's counters, the nodes left out for flapping, and whether it drains.
    fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "stats": self.stats(),
            "flapping": self.flapping(),
            "draining": self.is_draining(),
            "max_replans": self.config.max_replans,
            "step_timeout_ms": self.config.step_timeout.as_millis() as u64,
        })
    }

    async fn run_steps(
        &self,
        steps: Vec<(ValidatedContext, StepInput)>,
    ) -> Vec<Result<(), Status>> {
        self.accept_steps(steps).await
    }

    async fn step_results(
        &self,
        results: Vec<(ValidatedContext, String, StepOutcome)>,
    ) -> Vec<Result<(), Status>> {
        results
            .into_iter()
            .map(|(context, node_id, outcome)| {
                if let StepOutcome::Error(error) = &outcome {
                    tracing::debug!(
                        "node {node_id} reports a failed step of {}: {error}",
                        context.request_id
                    );
                }
                self.route_result(&context.request_id, context.step, outcome)
            })
            .collect()
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

    async fn fetch_weights(
        &self,
        request: pb::WeightRequest,
    ) -> Result<crate::server::WeightStream, Status> {
        match self.supply() {
            Some(supply) => supply.serve(request),
            None => Err(Status::unimplemented(format!(
                "node {} serves {} from a file outside the registry and shares no weights",
                self.node_id, self.model_id
            ))),
        }
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
