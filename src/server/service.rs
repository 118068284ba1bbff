//! The `NodeService` gRPC implementation: decodes and checks every message, then hands it
//! to the node's [`NodeHandler`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use prost::Message;

use super::handler::{NodeHandler, StepInput, StepOutcome, ValidatedContext};
use super::limits::{MessageKind, MessageLimits};
use crate::engine::SamplingParams;
use crate::proto::pb::node_server::Node;
use crate::proto::{decode_hidden, pb, request_ids};
use crate::topology::Partition;

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

    /// Checks a request context: present, well-formed plan, this node in it (unless
    /// `origin_only`, where this node must be the origin instead).
    fn validate(
        &self,
        context: Option<pb::RequestContext>,
        origin_only: bool,
    ) -> Result<ValidatedContext, Status> {
        let context = context.ok_or_else(|| {
            self.reject(Status::invalid_argument(
                "the message has no request context",
            ))
        })?;
        if context.request_id.is_empty() {
            return Err(self.reject(Status::invalid_argument(
                "the request context has no request id",
            )));
        }
        let wire_plan = context.plan.ok_or_else(|| {
            self.reject(Status::invalid_argument(
                "the request context has no partition plan",
            ))
        })?;
        let plan = Partition::from_wire(&wire_plan).map_err(|e| {
            self.reject(Status::invalid_argument(format!(
                "bad partition plan: {e:#}"
            )))
        })?;
        let node_id = self.handler.node_id();
        let index = if origin_only {
            if context.origin_node_id != node_id {
                return Err(self.reject(Status::invalid_argument(format!(
                    "a result for request {} was sent to node {node_id}, but its origin is {}",
                    context.request_id, context.origin_node_id
                ))));
            }
            plan.entry(&node_id).map_or(usize::MAX, |(i, _)| i)
        } else {
            plan.entry(&node_id).map(|(i, _)| i).ok_or_else(|| {
                self.reject(Status::invalid_argument(format!(
                    "the partition plan of request {} does not include node {node_id}",
                    context.request_id
                )))
            })?
        };
        let sampling = context.sampling.unwrap_or_default();
        let sampling = SamplingParams {
            temperature: sampling.temperature,
            top_p: if sampling.top_p == 0.0 {
                1.0
            } else {
                sampling.top_p
            },
            top_k: sampling.top_k as usize,
            seed: sampling.seed,
        };
        sampling.validate().map_err(|e| {
            self.reject(Status::invalid_argument(format!(
                "bad sampling parameters: {e:#}"
            )))
        })?;
        Ok(ValidatedContext {
            request_id: context.request_id,
            origin_node_id: context.origin_node_id,
            origin_address: context.origin_address,
            plan,
            index,
            sampling,
            position: context.position as usize,
            step: context.step,
            sample: context.sample,
            reserve_positions: context.reserve_positions as usize,
            token_index: context.token_index,
            top_logprobs: context
                .top_logprobs
                .map(|k| k.min(crate::engine::serve::sampling::MAX_TOP_LOGPROBS as u32)),
        })
    }
}

impl NodeService {
    /// A batch of more items than a node would ever send is refused whole.
    fn check_batch_size(&self, items: usize) -> Result<(), Status> {
        if items == 0 || items > MAX_BATCH_ITEMS {
            return Err(self.reject(Status::invalid_argument(format!(
                "a batch holds 1 to {MAX_BATCH_ITEMS} items, not {items}"
            ))));
        }
        Ok(())
    }

    /// Checks one step: its context, and tokens for the first shard of its plan or a
    /// hidden state for the others.
    fn check_step(&self, item: pb::StepItem) -> Result<(ValidatedContext, StepInput), Status> {
        let context = self.validate(item.context, false)?;
        match item.input {
            Some(pb::step_item::Input::Tokens(list)) => {
                if context.index != 0 {
                    return Err(self.reject(Status::invalid_argument(format!(
                        "tokens for request {} went to shard {} of the plan; only the first shard takes tokens",
                        context.request_id, context.index
                    ))));
                }
                if list.tokens.is_empty() {
                    return Err(self.reject(Status::invalid_argument("the step has no tokens")));
                }
                Ok((context, StepInput::Tokens(list.tokens)))
            }
            Some(pb::step_item::Input::Tensor(wire)) => {
                if context.index == 0 {
                    return Err(self.reject(Status::invalid_argument(format!(
                        "a hidden state for request {} went to the first shard of the plan, which takes tokens",
                        context.request_id
                    ))));
                }
                let hidden = decode_hidden(&wire).map_err(|e| {
                    self.reject(Status::invalid_argument(format!("bad tensor: {e}")))
                })?;
                Ok((context, StepInput::Hidden(hidden)))
            }
            None => Err(self.reject(Status::invalid_argument(
                "the step has neither tokens nor a tensor",
            ))),
        }
    }
}

/// A token's logprobs as they travel (the token itself travels beside them).
fn from_wire_logprobs(
    token: u32,
    wire: Option<pb::TokenLogprobs>,
) -> Option<crate::engine::serve::sampling::TokenLogprobs> {
    let wire = wire?;
    Some(crate::engine::serve::sampling::TokenLogprobs {
        token,
        logprob: wire.logprob,
        top: wire
            .top_tokens
            .into_iter()
            .zip(wire.top_logprobs)
            .take(crate::engine::serve::sampling::MAX_TOP_LOGPROBS)
            .collect(),
    })
}

impl NodeService {
    async fn steps(&self, items: Vec<pb::StepItem>) -> Result<Response<pb::BatchAck>, Status> {
        tracing::debug!("{} steps arrived", items.len());
        self.check_batch_size(items.len())?;
        let mut errors = vec![String::new(); items.len()];
        let mut accepted = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match self.check_step(item) {
                Ok(step) => {
                    accepted.push(step);
                    slots.push(i);
                }
                Err(status) => errors[i] = status.message().to_string(),
            }
        }
        if !accepted.is_empty() {
            for (slot, outcome) in slots
                .into_iter()
                .zip(self.handler.run_steps(accepted).await)
            {
                if let Err(status) = outcome {
                    errors[slot] = status.message().to_string();
                }
            }
        }
        Ok(Response::new(pb::BatchAck { errors }))
    }

    async fn results(&self, items: Vec<pb::ResultItem>) -> Result<Response<pb::BatchAck>, Status> {
        tracing::debug!("{} results arrived", items.len());
        self.check_batch_size(items.len())?;
        let mut errors = vec![String::new(); items.len()];
        let mut accepted = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let checked = self.validate(item.context, true).and_then(|context| {
                let outcome = match item.outcome {
                    Some(pb::result_item::Outcome::Token(token)) => {
                        StepOutcome::Token(token, from_wire_logprobs(token, item.logprobs))
                    }
                    Some(pb::result_item::Outcome::Done(_)) => StepOutcome::Done,
                    Some(pb::result_item::Outcome::Error(error)) => StepOutcome::Error(error),
                    None => {
                        return Err(self.reject(Status::invalid_argument(
                            "the result has neither a token nor an error",
                        )));
                    }
                };
                Ok((context, item.node_id, outcome))
            });
            match checked {
                Ok(result) => {
                    accepted.push(result);
                    slots.push(i);
                }
                Err(status) => errors[i] = status.message().to_string(),
            }
        }
        if !accepted.is_empty() {
            for (slot, outcome) in slots
                .into_iter()
                .zip(self.handler.step_results(accepted).await)
            {
                if let Err(status) = outcome {
                    errors[slot] = status.message().to_string();
                }
            }
        }
        Ok(Response::new(pb::BatchAck { errors }))
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
        Ok(Response::new(pb::Ack {}))
    }

    async fn finish_request(
        &self,
        request: Request<pb::FinishRequestMessage>,
    ) -> Result<Response<pb::Ack>, Status> {
        let message = request.into_inner();
        self.check_size(MessageKind::Control, &message)?;
        if message.request_id.is_empty() {
            return Err(self.reject(Status::invalid_argument("no request id to finish")));
        }
        self.handler
            .finish(message.request_id, message.reason)
            .await?;
        Ok(Response::new(pb::Ack {}))
    }
}
