//! The gRPC server as a resource: initialize binds and starts serving, health checks that
//! it still serves, cleanup shuts it down gracefully within a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;
use tonic::transport::Server;

use super::handler::NodeHandler;
use super::incoming::accept_connections;
use super::limits::MessageLimits;
use super::service::NodeService;
use crate::listener::{ConnectionGate, ConnectionLimits};
use crate::proto::pb::node_server::NodeServer;
use crate::resource::Resource;

/// HTTP/2 streams (calls) one connection may have open at once: a node's own traffic to a
/// peer needs a handful (a batch of steps, results, health, finish), so this bounds what
/// one connection can make a node hold without ever slowing the ring.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// How long cleanup waits for open calls to finish before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A connection without a call for this long is pinged, and closed when the ping is not
/// answered within `KEEPALIVE_TIMEOUT`: a peer that vanished gives its place back.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Accepts connections and runs their handshakes; aborted on cleanup.
    acceptor: JoinHandle<()>,
    local_addr: SocketAddr,
    service: Arc<NodeService>,
}

/// Serves `NodeService` and `grpc.health.v1` on one port.
pub struct GrpcServer {
    /// Where to listen. A port of 0 picks a free port on the first start, and later
    /// restarts reuse it, so that peers find the node where it was.
    listen: Mutex<SocketAddr>,
    handler: Arc<dyn NodeHandler>,
    running: Mutex<Option<Running>>,
    /// The bound port, shared with those that announce it (0 while not serving).
    port: Arc<AtomicU16>,
    /// With a cluster key: TLS that requires a client certificate of the cluster's CA.
    tls: Option<Arc<ServerConfig>>,
    /// Per-kind caps on received messages.
    limits: MessageLimits,
    /// Caps on connections, and their counts.
    gate: Arc<ConnectionGate>,
}

impl GrpcServer {
    /// `port` receives the bound port while the server serves (0 otherwise), for
    /// whoever announces it.
    pub fn new(listen: SocketAddr, handler: Arc<dyn NodeHandler>, port: Arc<AtomicU16>) -> Self {
        GrpcServer {
            listen: Mutex::new(listen),
            handler,
            running: Mutex::new(None),
            port,
            tls: None,
            limits: MessageLimits::default(),
            gate: ConnectionGate::new("grpc", ConnectionLimits::default()),
        }
    }

    /// Caps the connections the server holds, and how long a new one may take to finish
    /// its TLS handshake (or, without TLS, to send its first bytes).
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.gate = ConnectionGate::new("grpc", limits);
        self
    }

    /// The server's connection caps and counts (for `/metrics`).
    pub fn connection_gate(&self) -> Arc<ConnectionGate> {
        self.gate.clone()
    }

    /// Caps received messages per kind: control messages small, batches of hidden states
    /// larger (see [`MessageLimits`]).
    pub fn with_limits(mut self, limits: MessageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves over mutually authenticated TLS (a keyed cluster): a caller without a
    /// certificate of the cluster's CA fails the handshake before any call is read.
    pub fn with_tls(mut self, tls: Option<Arc<ServerConfig>>) -> Self {
        self.tls = tls;
        self
    }

    /// The port the server listens on, readable without going through the resource
    /// (discovery announces it): 0 while the server is not serving.
    pub fn port_handle(&self) -> Arc<AtomicU16> {
        self.port.clone()
    }

    /// The address the server is bound to (its port is the one to announce).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.lock().as_ref().map(|r| r.local_addr)
    }

    /// Messages refused as bad input since the server started.
    pub fn rejected_messages(&self) -> u64 {
        self.lock().as_ref().map_or(0, |r| r.service.rejected())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Resource for GrpcServer {
    const KIND: &'static str = "grpc_server";

    async fn initialize(&self) -> anyhow::Result<()> {
        let listen = *self.listen.lock().unwrap_or_else(|p| p.into_inner());
        let listener = crate::listener::bind_listener(listen)
            .with_context(|| format!("cannot listen for gRPC on {listen}"))?;
        let local_addr = listener.local_addr()?;
        self.listen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_port(local_addr.port());

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let service = Arc::new(NodeService::new(self.handler.clone()).with_limits(self.limits));
        // tonic caps per service: the largest kind's cap here, each kind's in the handlers.
        let node_server = NodeServer::from_arc(service.clone())
            .max_decoding_message_size(self.limits.transport_bytes())
            .max_encoding_message_size(crate::proto::MAX_MESSAGE_BYTES);
        health_reporter
            .set_serving::<NodeServer<NodeService>>()
            .await;
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let (ready, incoming) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_connections(
            listener,
            self.gate.clone(),
            self.tls.clone(),
            ready,
        ));
        let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
        let mut builder = Server::builder()
            .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        let task = tokio::spawn(
            builder
                .add_service(health_service)
                .add_service(node_server)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown_rx.await;
                }),
        );
        tracing::info!("gRPC server listening on {local_addr}");
        self.port.store(local_addr.port(), Ordering::Relaxed);
        *self.lock() = Some(Running {
            shutdown,
            task,
            acceptor,
            local_addr,
            service,
        });
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let running = self.lock().take();
        self.port.store(0, Ordering::Relaxed);
        let Some(running) = running else {
            return Ok(());
        };
        running.acceptor.abort();
        let _ = running.shutdown.send(());
        let mut task = running.task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(_) => Ok(()),
            Err(_) => {
                task.abort();
                let _ = task.await;
                anyhow::bail!(
                    "open calls did not finish within {SHUTDOWN_GRACE:?}; they were cut off"
                )
            }
        }
    }

    async fn health(&self) -> anyhow::Result<()> {
        match &*self.lock() {
            Some(running) if !running.task.is_finished() => Ok(()),
            Some(_) => anyhow::bail!("the gRPC server task has stopped"),
            None => anyhow::bail!("the gRPC server is not running"),
        }
    }

    fn info(&self) -> serde_json::Value {
        let running = self.lock();
        json!({
            "listen": running.as_ref().map(|r| r.local_addr.to_string()),
            "tls": self.tls.is_some(),
            "max_message_bytes": self.limits.to_json(),
            "max_plan_entries": crate::topology::MAX_PLAN_ENTRIES,
            "max_concurrent_streams": MAX_CONCURRENT_STREAMS,
            "rejected_messages": running.as_ref().map_or(0, |r| r.service.rejected()),
            "oversize_messages": running.as_ref().map_or(0, |r| r.service.oversize()),
            "connections": self.gate.to_json(),
            "flow": self.handler.report(),
        })
    }
}
