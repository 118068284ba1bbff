//! The `NodeService` gRPC implementation: decodes and checks every message (through
//! `crate::proto`'s conversions), then hands it to the node's [`NodeHandler`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use prost::Message;

use super::handler::NodeHandler;
use super::limits::{MessageKind, MessageLimits};
use crate::proto::pb::node_server::Node;
use crate::proto::{pb, request_ids, result_from_wire, step_from_wire};

/// The service, with counters of what it refused.
pub struct NodeService {
    handler: Arc<dyn NodeHandler>,
    rejected: AtomicU64,
    limits: MessageLimits,
    /// Messages refused for their size (also counted in `rejected`).
    oversize: AtomicU64,
}

impl NodeService {
    pub fn new(handler: Arc<dyn NodeHandler>) -> Self {
        NodeService {
            handler,
            rejected: AtomicU64::new(0),
            limits: MessageLimits::default(),
            oversize: AtomicU64::new(0),
        }
    }

    /// Caps received messages per kind (see [`MessageLimits`]).
    pub fn with_limits(mut self, limits: MessageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Messages refused for their size so far.
    pub fn oversize(&self) -> u64 {
        self.oversize.load(Ordering::Relaxed)
    }

    /// Refuses a decoded message over its kind's cap (counted).
    fn check_size(&self, kind: MessageKind, message: &impl Message) -> Result<(), Status> {
        self.limits
            .check(kind, message.encoded_len())
            .map_err(|status| {
                self.oversize.fetch_add(1, Ordering::Relaxed);
                self.reject(status)
            })
    }

    /// Messages refused as bad input so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    fn reject(&self, status: Status) -> Status {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("refused a message: {}", status.message());
        status
    }
}

impl NodeService {
    /// A batch of more items than a node would ever send is refused whole.
    /// Control messages about one request must name it: an empty id would match no
    /// request, so the caller learns of its mistake instead of getting an empty answer.
    fn require_request_id(&self, request_id: &str, to: &str) -> Result<(), Status> {
        if request_id.is_empty() {
            return Err(self.reject(Status::invalid_argument(format!("no request id to {to}"))));
        }
        Ok(())
    }

    fn check_batch_size(&self, items: usize) -> Result<(), Status> {
        if items == 0 || items > MAX_BATCH_ITEMS {
            return Err(self.reject(Status::invalid_argument(format!(
                "a batch holds 1 to {MAX_BATCH_ITEMS} items, not {items}"
            ))));
        }
        Ok(())
    }

    /// The shared loop of every batch call (`SendSteps`, `SendResults`): each item is
    /// checked on its own (a bad one is refused, the others go on), the accepted ones go to
    /// the handler together, and the acknowledgement says, per item in order, why it was
    /// refused (empty: accepted).
    async fn acknowledge<I, C, F>(
        &self,
        items: Vec<I>,
        check: impl Fn(I) -> Result<C, String>,
        run: impl FnOnce(Vec<C>) -> F,
    ) -> Result<Response<pb::BatchAck>, Status>
    where
        F: Future<Output = Vec<Result<(), Status>>>,
    {
        self.check_batch_size(items.len())?;
        let mut errors = vec![String::new(); items.len()];
        let mut accepted = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match check(item) {
                Ok(checked) => {
                    accepted.push(checked);
                    slots.push(i);
                }
                Err(message) => {
                    self.reject(Status::invalid_argument(message.clone()));
                    errors[i] = message;
                }
            }
        }
        if !accepted.is_empty() {
            for (slot, outcome) in slots.into_iter().zip(run(accepted).await) {
                if let Err(status) = outcome {
                    errors[slot] = status.message().to_string();
                }
            }
        }
        Ok(Response::new(pb::BatchAck { errors }))
    }

    async fn steps(&self, items: Vec<pb::StepItem>) -> Result<Response<pb::BatchAck>, Status> {
        tracing::debug!("{} steps arrived", items.len());
        let node_id = self.handler.node_id();
        self.acknowledge(
            items,
            |item| step_from_wire(item, &node_id),
            |steps| self.handler.run_steps(steps),
        )
        .await
    }

    async fn results(&self, items: Vec<pb::ResultItem>) -> Result<Response<pb::BatchAck>, Status> {
        tracing::debug!("{} results arrived", items.len());
        let node_id = self.handler.node_id();
        self.acknowledge(
            items,
            |item| result_from_wire(item, &node_id),
            |results| self.handler.step_results(results),
        )
        .await
    }
}

/// The span a call from a peer runs in: the call's name and the request ids its metadata
/// carries (see `crate::proto::request_ids`), so that whatever the node logs while it
/// handles the call names the requests.
fn call_span<T>(call: &'static str, request: &Request<T>) -> tracing::Span {
    tracing::debug_span!(
        "rpc",
        call,
        request_ids = %request_ids::read(request.metadata())
    )
}

/// Items a batch may hold.
pub const MAX_BATCH_ITEMS: usize = 1024;

#[tonic::async_trait]
impl Node for NodeService {
    type FetchWeightsStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::WeightChunk, Status>>;

    async fn fetch_weights(
        &self,
        request: Request<pb::WeightRequest>,
    ) -> Result<Response<Self::FetchWeightsStream>, Status> {
        let request = request.into_inner();
        self.check_size(MessageKind::Control, &request)?;
        if request.model_id.is_empty() || request.file.is_empty() || request.ranges.is_empty() {
            return Err(self.reject(Status::invalid_argument(
                "a weight request names a model, a file and at least one byte range",
            )));
        }
        let chunks = self.handler.fetch_weights(request).await?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            chunks,
        )))
    }

    async fn send_steps(
        &self,
        request: Request<pb::StepBatch>,
    ) -> Result<Response<pb::BatchAck>, Status> {
        let span = call_span("SendSteps", &request);
        self.check_size(MessageKind::Batch, request.get_ref())?;
        self.steps(request.into_inner().items)
            .instrument(span)
            .await
    }

    async fn send_results(
        &self,
        request: Request<pb::ResultBatch>,
    ) -> Result<Response<pb::BatchAck>, Status> {
        let span = call_span("SendResults", &request);
        self.check_size(MessageKind::Batch, request.get_ref())?;
        self.results(request.into_inner().items)
            .instrument(span)
            .await
    }

    async fn collect_topology(
        &self,
        request: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::TopologyResponse>, Status> {
        self.check_size(MessageKind::Control, request.get_ref())?;
        Ok(Response::new(self.handler.topology().await?))
    }

    async fn health_check(
        &self,
        request: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        self.check_size(MessageKind::Control, request.get_ref())?;
        Ok(Response::new(pb::HealthCheckResponse {
            node_id: self.handler.node_id(),
            serving: self.handler.is_serving(),
        }))
    }

    async fn send_status(
        &self,
        request: Request<pb::StatusMessage>,
    ) -> Result<Response<pb::Ack>, Status> {
        let message = request.into_inner();
        self.check_size(MessageKind::Control, &message)?;
        if message.payload.len() > 64 << 10 {
            return Err(self.reject(Status::invalid_argument(
                "status payloads are limited to 64 KiB",
            )));
        }
        self.handler.status(message).await?;
        Ok(Response::new(pb::Ack::default()))
    }

    async fn request_progress(
        &self,
        request: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::ProgressResponse>, Status> {
        let message = request.into_inner();
        self.check_size(MessageKind::Control, &message)?;
        self.require_request_id(&message.request_id, "report progress on")?;
        Ok(Response::new(self.handler.progress(&message.request_id)))
    }

    async fn finish_request(
        &self,
        request: Request<pb::FinishRequestMessage>,
    ) -> Result<Response<pb::Ack>, Status> {
        let message = request.into_inner();
        self.check_size(MessageKind::Control, &message)?;
        self.require_request_id(&message.request_id, "finish")?;
        let kept_blocks = self
            .handler
            .finish(message.request_id, message.reason, message.keep_blocks)
            .await?;
        Ok(Response::new(pb::Ack { kept_blocks }))
    }
}
