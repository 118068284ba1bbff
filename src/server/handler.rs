//! What a node does with the messages it receives; the service checks them first.

use tonic::Status;

use crate::engine::SamplingParams;
use crate::proto::pb;
use crate::topology::Partition;

/// A request's context after the service has checked it: the plan is well formed and
/// includes this node.
#[derive(Debug, Clone)]
pub struct ValidatedContext {
    pub request_id: String,
    pub origin_node_id: String,
    pub origin_address: String,
    pub plan: Partition,
    /// This node's index in the plan.
    pub index: usize,
    pub sampling: SamplingParams,
    pub position: usize,
    pub step: u64,
}

/// What arrives for a shard to run.
#[derive(Debug, Clone)]
pub enum StepInput {
    Tokens(Vec<u32>),
    Hidden(crate::engine::HiddenState),
}

/// The last shard's outcome for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Token(u32),
    Error(String),
}

/// The node's behaviour behind the gRPC service. Implemented by the node's request flow
/// (and by tests). Errors are gRPC statuses: INVALID_ARGUMENT and NOT_FOUND for bad input,
/// never a panic.
#[tonic::async_trait]
pub trait NodeHandler: Send + Sync + 'static {
    /// This node's id (the service refuses plans that do not include it).
    fn node_id(&self) -> String;

    /// Whether the node can take work now (peers stop planning with it when not).
    fn is_serving(&self) -> bool {
        true
    }

    /// Tokens (SendPrompt) or a hidden state (SendTensor) for this node's shard.
    async fn run_step(&self, context: ValidatedContext, input: StepInput) -> Result<(), Status>;

    /// The outcome of a step of a request this node originated.
    async fn step_result(
        &self,
        context: ValidatedContext,
        node_id: String,
        outcome: StepOutcome,
    ) -> Result<(), Status>;

    /// This node's view of the cluster.
    async fn topology(&self) -> Result<pb::TopologyResponse, Status>;

    /// An opaque status message from a peer.
    async fn status(&self, message: pb::StatusMessage) -> Result<(), Status>;

    /// The request is over: drop what it holds here.
    async fn finish(&self, request_id: String, reason: String) -> Result<(), Status>;
}
