//! The one stand-in node the tests and benchmarks serve with a real gRPC server when they
//! need a peer that is not a whole node: it takes the steps and results the node service
//! lets through (checking that they are what the service promises its handler), hands
//! the hidden states of the steps it takes to whoever listens, and serves weight requests
//! when given a way to.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use exo::engine::{HiddenState, SamplingParams};
use exo::proto::{StepInput, StepOutcome, ValidatedContext, pb};
use exo::server::{NodeHandler, WeightStream};
use exo::topology::Partition;
use tokio::sync::mpsc;
use tonic::Status;

/// How a stand-in answers weight requests.
pub type ServeWeights =
    Arc<dyn Fn(pb::WeightRequest) -> Result<WeightStream, Status> + Send + Sync>;

/// A node service handler with no engine and no flow behind it.
pub struct StandIn {
    node_id: String,
    /// Where the hidden states of the steps it takes go, with when each arrived.
    hidden: Option<mpsc::UnboundedSender<(HiddenState, Instant)>>,
    /// Results refused as a node refuses those of a request it does not know.
    refuse_results: bool,
    weights: Option<ServeWeights>,
    steps: AtomicU64,
    results: AtomicU64,
    /// What its health answer says of its engine (see [`StandIn::set_serving`]).
    serving: AtomicBool,
}

impl StandIn {
    /// A stand-in that takes every step and result.
    pub fn new(node_id: impl Into<String>) -> Self {
        StandIn {
            node_id: node_id.into(),
            hidden: None,
            refuse_results: false,
            weights: None,
            steps: AtomicU64::new(0),
            results: AtomicU64::new(0),
            serving: AtomicBool::new(true),
        }
    }

    /// Hands the hidden state of every step it takes to the returned receiver.
    pub fn capturing(mut self) -> (Self, mpsc::UnboundedReceiver<(HiddenState, Instant)>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.hidden = Some(sender);
        (self, receiver)
    }

    /// Refuses every result (NOT_FOUND: no such request is waiting here).
    pub fn refusing_results(mut self) -> Self {
        self.refuse_results = true;
        self
    }

    /// Serves weight requests with `serve`.
    pub fn serving_weights(mut self, serve: ServeWeights) -> Self {
        self.weights = Some(serve);
        self
    }

    /// Says in its health answers that its engine serves (true) or is down (false), as a
    /// node whose engine is in Error does; it takes steps and results either way.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Steps and results it took so far.
    pub fn taken(&self) -> (u64, u64) {
        (
            self.steps.load(Ordering::Relaxed),
            self.results.load(Ordering::Relaxed),
        )
    }
}

#[tonic::async_trait]
impl NodeHandler for StandIn {
    fn node_id(&self) -> String {
        self.node_id.clone()
    }

    fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    async fn run_steps(
        &self,
        steps: Vec<(ValidatedContext, StepInput)>,
    ) -> Vec<Result<(), Status>> {
        let arrived = Instant::now();
        self.steps.fetch_add(steps.len() as u64, Ordering::Relaxed);
        steps
            .into_iter()
            .map(|(context, input)| {
                // What the service promises: a valid plan that includes this node, and
                // tensors of the size they say.
                assert_eq!(context.plan.entries[context.index].node_id, self.node_id);
                assert!(context.plan.validate().is_ok());
                if let StepInput::Hidden(hidden) = input {
                    assert_eq!(hidden.data.len(), hidden.rows * hidden.cols);
                    if let Some(sink) = &self.hidden {
                        let _ = sink.send((hidden, arrived));
                    }
                }
                Ok(())
            })
            .collect()
    }

    async fn step_results(
        &self,
        results: Vec<(ValidatedContext, String, StepOutcome)>,
    ) -> Vec<Result<(), Status>> {
        results
            .into_iter()
            .map(|(context, _, _)| {
                // What the service promises: results reach their origin.
                assert_eq!(context.origin_node_id, self.node_id);
                if self.refuse_results {
                    return Err(Status::not_found(format!(
                        "unknown request id {}",
                        context.request_id
                    )));
                }
                self.results.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .collect()
    }

    async fn fetch_weights(&self, request: pb::WeightRequest) -> Result<WeightStream, Status> {
        match &self.weights {
            Some(serve) => serve(request),
            None => Err(Status::unimplemented(format!(
                "stand-in {} serves no weights",
                self.node_id
            ))),
        }
    }
}

/// The context of a greedy step `step` (at position `step`) of `request_id`, whose origin
/// is `origin`, for the node at `index` of `plan`, as it travels.
pub fn greedy_context(
    request_id: &str,
    origin: &str,
    plan: Partition,
    index: usize,
    step: u64,
) -> pb::RequestContext {
    ValidatedContext {
        request_id: request_id.into(),
        origin_node_id: origin.into(),
        origin_address: "127.0.0.1:1".into(),
        plan,
        index,
        sampling: SamplingParams::greedy(),
        position: step as usize,
        step,
        sample: true,
        reserve_positions: 0,
        token_index: 0,
        top_logprobs: None,
        prefix_blocks: Vec::new(),
        constraint: None,
    }
    .to_wire()
}
