//! `GrpcPeerHandle`: a resource per peer. Initialize connects and checks that the peer is
//! who it should be; health asks it; reconnect rebuilds the channel. Its operations are
//! reachable only through `Managed::ensure_ready` / `with_connection`, and every call
//! carries a deadline.
//!
//! A peer whose own engine is down (in Error, or closing) still answers: its handle stays
//! usable, so that results and control messages still reach it (an origin whose engine
//! failed goes on running its requests over the others), and records "not serving" in a
//! flag the peer table reads ([`GrpcPeerHandle::serving_flag`]) to leave it out of plans.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use prost::Message;
use serde_json::json;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::proto::MAX_MESSAGE_BYTES;
use crate::proto::pb;
use crate::proto::pb::node_client::NodeClient;
use crate::proto::request_ids;
use crate::resource::Resource;

use super::LinkStats;

/// Deadlines of a peer handle.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    /// Health checks (and the identity check on connect).
    pub health: Duration,
    /// Messages that carry work (prompts, tensors, results).
    pub call: Duration,
}

impl Default for PeerTimeouts {
    fn default() -> Self {
        PeerTimeouts {
            connect: Duration::from_secs(2),
            health: Duration::from_secs(1),
            call: Duration::from_secs(4),
        }
    }
}

/// A connection to one peer node.
pub struct GrpcPeerHandle {
    node_id: String,
    address: String,
    timeouts: PeerTimeouts,
    /// With a cluster key: mutually authenticated TLS (see `crate::trust`).
    tls: Option<ClientTlsConfig>,
    client: RwLock<Option<NodeClient<Channel>>>,
    stats: LinkStats,
    /// What the peer's last health answer said of its engine (true until it answers).
    serving: Arc<AtomicBool>,
}

impl GrpcPeerHandle {
    pub fn new(
        node_id: impl Into<String>,
        address: impl Into<String>,
        timeouts: PeerTimeouts,
    ) -> Self {
        GrpcPeerHandle {
            node_id: node_id.into(),
            address: address.into(),
            timeouts,
            tls: None,
            client: RwLock::new(None),
            stats: LinkStats::default(),
            serving: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Speaks TLS to the peer (a keyed cluster): the peer must present a certificate of
    /// the cluster's CA, and gets ours.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// host:port of the peer's gRPC server.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Round trips, failed calls and bytes of this link.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Whether the peer's engine serves, as its last health answer said: shared with
    /// whoever keeps the handle (the peer table), who can read it without going through
    /// `Managed::ensure_ready` (which may wait on a reconnect).
    pub fn serving_flag(&self) -> Arc<AtomicBool> {
        self.serving.clone()
    }

    fn client(&self) -> anyhow::Result<NodeClient<Channel>> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("the peer handle is not connected")
    }

    fn request<T>(message: T, deadline: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(deadline);
        request
    }

    async fn connect(&self) -> anyhow::Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.address))
            .with_context(|| format!("bad peer address {}", self.address))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .context("cannot set up TLS to the peer")?;
        }
        let endpoint = endpoint
            .connect_timeout(self.timeouts.connect)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            // Weight transfers (`FetchWeights`) stream hundreds of MB from the peer: h2's
            // default 64 KiB window would cap them at a fraction of the link.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            // and 16 KiB frames would split every 1 MiB chunk in 64.
            .max_frame_size(1 << 20);
        let channel = endpoint.connect().await.with_context(|| {
            format!(
                "cannot connect to peer {} at {}",
                self.node_id, self.address
            )
        })?;
        let client = NodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Some(client);
        self.check_identity().await
    }

    /// Asks the peer who it is: an address that now belongs to another node (a restart
    /// on the same port) must not be taken for this one. Whether its engine serves is
    /// recorded, not a failure: a peer whose engine is down still takes results for the
    /// requests it is the origin of.
    async fn check_identity(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let reply = self
            .client()?
            .health_check(Self::request(
                pb::HealthCheckRequest {},
                self.timeouts.health,
            ))
            .await
            .map_err(|status| {
                self.stats.failed();
                anyhow::Error::new(status)
                    .context(format!("health check of peer {} failed", self.node_id))
            })?
            .into_inner();
        self.stats.round_trip(started.elapsed());
        if reply.node_id != self.node_id {
            bail!(
                "{} is node {}, not the expected {}",
                self.address,
                reply.node_id,
                self.node_id
            );
        }
        let was_serving = self.serving.swap(reply.serving, Ordering::Relaxed);
        if was_serving != reply.serving {
            if reply.serving {
                tracing::info!("peer {} serves again", self.node_id);
            } else {
                tracing::warn!(
                    "peer {} says its engine is not serving: plans leave it out",
                    self.node_id
                );
            }
        }
        Ok(())
    }

    /// A client for a weight transfer (`FetchWeights` streams for as long as the transfer
    /// takes, so it gets no per-call deadline; `crate::supply` bounds each chunk's wait).
    pub fn weights_client(&self) -> anyhow::Result<NodeClient<Channel>> {
        self.client()
    }

    /// A call that carries the ids of the requests it serves (see `request_ids`).
    fn request_for<'a, T>(
        message: T,
        deadline: Duration,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Request<T> {
        let mut request = Self::request(message, deadline);
        request_ids::attach(request.metadata_mut(), ids);
        request
    }

    /// A batch call's request: its bytes counted, its items' request ids in the metadata,
    /// and a debug line naming them.
    fn batch_request<T: Message>(
        &self,
        call: &str,
        message: T,
        ids: &[String],
        items: usize,
    ) -> Request<T> {
        self.stats.sent(message.encoded_len());
        let request =
            Self::request_for(message, self.timeouts.call, ids.iter().map(String::as_str));
        tracing::debug!(
            request_ids = %request_ids::read(request.metadata()),
            "{call} to {}: {items} items",
            self.node_id,
        );
        request
    }

    /// Sends steps for the peer's shards; per step, the peer's refusal (empty: accepted).
    pub async fn send_steps(&self, message: pb::StepBatch) -> anyhow::Result<Vec<String>> {
        let ids: Vec<String> = context_ids(&message.items, |i| &i.context)
            .map(str::to_string)
            .collect();
        let count = message.items.len();
        let request = self.batch_request("SendSteps", message, &ids, count);
        let reply = self
            .client()?
            .send_steps(request)
            .await
            .map_err(|s| self.call_error("SendSteps", s))?
            .into_inner();
        self.stats.received(reply.encoded_len());
        Ok(reply.errors)
    }

    /// Sends step outcomes to their origin; per outcome, the refusal (empty: accepted).
    pub async fn send_results(&self, message: pb::ResultBatch) -> anyhow::Result<Vec<String>> {
        let ids: Vec<String> = context_ids(&message.items, |i| &i.context)
            .map(str::to_string)
            .collect();
        let count = message.items.len();
        let request = self.batch_request("SendResults", message, &ids, count);
        let reply = self
            .client()?
            .send_results(request)
            .await
            .map_err(|s| self.call_error("SendResults", s))?
            .into_inner();
        self.stats.received(reply.encoded_len());
        Ok(reply.errors)
    }

    pub async fn collect_topology(&self) -> anyhow::Result<pb::TopologyResponse> {
        Ok(self
            .client()?
            .collect_topology(Self::request(pb::TopologyRequest {}, self.timeouts.health))
            .await
            .map_err(|s| self.call_error("CollectTopology", s))?
            .into_inner())
    }

    pub async fn send_status(&self, message: pb::StatusMessage) -> anyhow::Result<()> {
        self.client()?
            .send_status(Self::request(message, self.timeouts.health))
            .await
            .map_err(|s| self.call_error("SendStatus", s))?;
        Ok(())
    }

    /// Tells the peer that a request is over, asking it to keep the blocks `keep_blocks`
    /// names in its prefix cache; returns how many leading ones it keeps.
    pub async fn finish_request(
        &self,
        request_id: &str,
        reason: &str,
        keep_blocks: &[u64],
    ) -> anyhow::Result<u32> {
        let ack = self
            .client()?
            .finish_request(Self::request_for(
                pb::FinishRequestMessage {
                    request_id: request_id.to_string(),
                    reason: reason.to_string(),
                    keep_blocks: keep_blocks.to_vec(),
                },
                self.timeouts.health,
                [request_id],
            ))
            .await
            .map_err(|s| self.call_error("FinishRequest", s))?;
        Ok(ack.into_inner().kept_blocks)
    }

    /// How far the peer got with `request_id`'s steps (see `RequestProgress`).
    pub async fn request_progress(&self, request_id: &str) -> anyhow::Result<pb::ProgressResponse> {
        let reply = self
            .client()?
            .request_progress(Self::request_for(
                pb::ProgressRequest {
                    request_id: request_id.to_string(),
                },
                self.timeouts.health,
                [request_id],
            ))
            .await
            .map_err(|s| self.call_error("RequestProgress", s))?;
        Ok(reply.into_inner())
    }

    fn call_error(&self, call: &str, status: Status) -> anyhow::Error {
        self.stats.failed();
        let what = format!("{call} to peer {} ({})", self.node_id, self.address);
        anyhow::Error::new(status).context(what)
    }
}

/// The request ids of a batch's items.
fn context_ids<'a, T>(
    items: &'a [T],
    context: impl Fn(&'a T) -> &'a Option<pb::RequestContext>,
) -> impl Iterator<Item = &'a str> {
    items
        .iter()
        .filter_map(move |item| context(item).as_ref())
        .map(|c| c.request_id.as_str())
}

/// Whether a gRPC status means the connection (or the peer) is in trouble rather than
/// that the message was refused.
pub fn is_transient_status(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
    )
}

impl Resource for GrpcPeerHandle {
    const KIND: &'static str = "peer_handle";

    async fn initialize(&self) -> anyhow::Result<()> {
        self.connect().await
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.client
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Ok(())
    }

    async fn health(&self) -> anyhow::Result<()> {
        self.check_identity().await
    }

    async fn reconnect(&self) -> Option<anyhow::Result<()>> {
        Some(self.connect().await)
    }

    fn is_transient(&self, error: &anyhow::Error) -> bool {
        error
            .chain()
            .find_map(|cause| cause.downcast_ref::<Status>())
            .is_some_and(is_transient_status)
            || error
                .chain()
                .any(|cause| cause.downcast_ref::<tonic::transport::Error>().is_some())
    }

    fn info(&self) -> serde_json::Value {
        json!({
            "node_id": self.node_id,
            "address": self.address,
            "tls": self.tls.is_some(),
            "serving": self.serving.load(Ordering::Relaxed),
            "link": self.stats.to_json(),
        })
    }
}
