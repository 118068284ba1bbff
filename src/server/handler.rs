//! What a node does with the messages it receives; the service checks them first (and
//! `crate::proto` turns them into the types the handler takes).

use tonic::Status;

use crate::proto::{StepInput, StepOutcome, ValidatedContext, pb};

/// The node's behaviour behind the gRPC service. Implemented by the node's request flow,
/// by the transfer benchmark's peer and by the tests' stand-in; what only a full node does
/// has a default that a node without it would answer. Errors are gRPC statuses:
/// INVALID_ARGUMENT and NOT_FOUND for bad input, never a panic.
#[tonic::async_trait]
pub trait NodeHandler: Send + Sync + 'static {
    /// This node's id (the service refuses plans that do not include it).
    fn node_id(&self) -> String;

    /// Whether the node can take work now (peers stop planning with it when not).
    fn is_serving(&self) -> bool {
        true
    }

    /// What the handler reports about the requests through it (the gRPC server's
    /// resource info shows it).
    fn report(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Steps for this node's shards (tokens for the first, hidden states for the others);
    /// one answer per step, in order. A node that runs no shards refuses them.
    async fn run_steps(
        &self,
        steps: Vec<(ValidatedContext, StepInput)>,
    ) -> Vec<Result<(), Status>> {
        let refusal = format!("node {} runs no steps", self.node_id());
        steps
            .iter()
            .map(|_| Err(Status::unimplemented(refusal.clone())))
            .collect()
    }

    /// Outcomes of steps of requests this node originated (with the node that produced
    /// each); one answer per outcome, in order. A node that originates no requests
    /// refuses them.
    async fn step_results(
        &self,
        results: Vec<(ValidatedContext, String, StepOutcome)>,
    ) -> Vec<Result<(), Status>> {
        let refusal = format!("node {} waits for no results", self.node_id());
        results
            .iter()
            .map(|_| Err(Status::unimplemented(refusal.clone())))
            .collect()
    }

    /// This node's view of the cluster (none, unless the node keeps one).
    async fn topology(&self) -> Result<pb::TopologyResponse, Status> {
        Ok(pb::TopologyResponse::default())
    }

    /// An opaque status message from a peer (taken and dropped unless the node reads them).
    async fn status(&self, _message: pb::StatusMessage) -> Result<(), Status> {
        Ok(())
    }

    /// The request is over: drop what it holds here (nothing, unless the node keeps
    /// something per request), first keeping the KV of the blocks `keep_blocks` names in
    /// its prefix cache. Returns how many leading blocks of them the node keeps.
    async fn finish(
        &self,
        _request_id: String,
        _reason: String,
        _keep_blocks: Vec<u64>,
    ) -> Result<u32, Status> {
        Ok(0)
    }

    /// How far this node got with `request_id`'s steps (nothing known, unless the node
    /// runs shards).
    fn progress(&self, _request_id: &str) -> pb::ProgressResponse {
        pb::ProgressResponse::default()
    }

    /// Byte ranges of a weight file this node holds, as a stream of checksummed chunks
    /// (see `crate::supply`). Nodes that hold no weights to share refuse.
    async fn fetch_weights(&self, request: pb::WeightRequest) -> Result<WeightStream, Status> {
        Err(Status::unimplemented(format!(
            "node {} does not serve weights (asked for {} of {})",
            self.node_id(),
            request.file,
            request.model_id
        )))
    }
}

/// The chunks of a weight transfer, as the handler produces them.
pub type WeightStream = tokio::sync::mpsc::Receiver<Result<pb::WeightChunk, Status>>;
