//! The flow as the node service's handler: what a node does with the messages its peers
//! send (steps, results, finish, topology, weight requests), and how it reports itself.

use tonic::Status;

use super::RequestFlow;
use crate::proto::{StepInput, StepOutcome, ValidatedContext, pb};
use crate::resource::ResourceState;
use crate::server::{NodeHandler, WeightStream};
use crate::topology::DeviceCapabilities;

impl RequestFlow {
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
                self.origin
                    .route(&context.request_id, context.step, outcome)
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

    async fn finish(
        &self,
        request_id: String,
        reason: String,
        keep_blocks: Vec<u64>,
    ) -> Result<u32, Status> {
        tracing::debug!("request {request_id} {reason}");
        Ok(self.finish_local(&request_id, &keep_blocks).await as u32)
    }

    /// The last step of `request_id` this node accepted and the last it passed on.
    fn progress(&self, request_id: &str) -> pb::ProgressResponse {
        match self.shard.steps(request_id) {
            Some(steps) => pb::ProgressResponse {
                known: true,
                accepted_step: steps.accepted,
                passed_step: steps.passed,
            },
            None => pb::ProgressResponse::default(),
        }
    }

    async fn fetch_weights(&self, request: pb::WeightRequest) -> Result<WeightStream, Status> {
        match self.supply() {
            Some(supply) => supply.serve(request),
            None => Err(Status::unimplemented(format!(
                "node {} serves {} from a file outside the registry and shares no weights",
                self.node_id, self.model_id
            ))),
        }
    }
}
