//! The API server as a resource: bind, serve, shut down gracefully (ending open streams).
//!
//! Connections are accepted through a [`ConnectionGate`] (caps per server and per
//! address) and served by hyper's HTTP/1.1 connection with a header read timeout: a
//! connection that sends no request within the silent timeout, new or kept alive, is
//! closed and counted. (HTTP/1.1 only: every client of the API speaks it, and a server
//! that first sniffs for HTTP/2 has no deadline while it waits.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use super::config::ApiConfig;
use super::limit::RequestLimiter;
use super::routes::router;
use super::state::ApiState;
use crate::listener::{Admission, ConnectionGate, ConnectionLimits, accept_admitted};
use crate::resource::Resource;
use crate::trust::SecurityStatus;

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a connection past a cap is told before it is closed.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = json!({"error": {
        "message": "this node holds as many connections as it allows (from your address, or in all); try again shortly",
        "type": "server_error", "param": null, "code": "too_many_connections",
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

struct Running {
    task: JoinHandle<std::io::Result<()>>,
    local_addr: SocketAddr,
}

/// Serves the HTTP API.
pub struct ApiServer {
    listen: Mutex<SocketAddr>,
    state: Mutex<Option<ApiState>>,
    shutting_down: watch::Sender<bool>,
    running: Mutex<Option<Running>>,
    port: Arc<AtomicU16>,
    config: Arc<ApiConfig>,
    limiter: Arc<RequestLimiter>,
    security: SecurityStatus,
    gate: Arc<ConnectionGate>,
}

impl ApiServer {
    /// `state` may be given later with [`set_state`](Self::set_state), before initialize.
    pub fn new(listen: SocketAddr, config: ApiConfig, security: SecurityStatus) -> Self {
        ApiServer {
            limiter: Arc::new(RequestLimiter::new(&config)),
            config: Arc::new(config),
            security,
            listen: Mutex::new(listen),
            state: Mutex::new(None),
            shutting_down: watch::channel(false).0,
            running: Mutex::new(None),
            port: Arc::new(AtomicU16::new(0)),
            gate: ConnectionGate::new("api", ConnectionLimits::default()),
        }
    }

    /// Caps the connections the server holds and how long they may stay silent.
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.gate = ConnectionGate::new("api", limits);
        self
    }

    /// The server's connection caps and counts (for `/metrics`).
    pub fn connection_gate(&self) -> Arc<ConnectionGate> {
        self.gate.clone()
    }

    /// The bound port while serving (0 otherwise), readable from outside the resource.
    pub fn port_handle(&self) -> Arc<AtomicU16> {
        self.port.clone()
    }

    /// A receiver that turns true when the server shuts down (for `ApiState`).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutting_down.subscribe()
    }

    /// The API's access rules and its request limiter (for `ApiState`).
    pub fn access(&self) -> (Arc<ApiConfig>, Arc<RequestLimiter>) {
        (self.config.clone(), self.limiter.clone())
    }

    pub fn set_state(&self, state: ApiState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.local_addr)
    }
}

impl Resource for ApiServer {
    const KIND: &'static str = "api_server";

    async fn initialize(&self) -> anyhow::Result<()> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("the API server has no state to serve")?;
        let listen = *self.listen.lock().unwrap_or_else(|p| p.into_inner());
        let listener = crate::listener::bind_listener(listen)
            .with_context(|| format!("cannot listen for HTTP on {listen}"))?;
        let local_addr = listener.local_addr()?;
        self.listen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_port(local_addr.port());
        self.shutting_down.send_replace(false);
        let stop = self.shutting_down.subscribe();
        let app = router(state);
        let task = tokio::spawn(serve(listener, app, self.gate.clone(), stop));
        tracing::info!("API listening on http://{local_addr}");
        self.port.store(local_addr.port(), Ordering::Relaxed);
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Running { task, local_addr });
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.shutting_down.send_replace(true);
        self.port.store(0, Ordering::Relaxed);
        if let Some(running) = running {
            let mut task = running.task;
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
                anyhow::bail!(
                    "open HTTP connections did not close within {SHUTDOWN_GRACE:?}; they were cut off"
                );
            }
        }
        Ok(())
    }

    async fn health(&self) -> anyhow::Result<()> {
        match &*self.running.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(running) if !running.task.is_finished() => Ok(()),
            _ => anyhow::bail!("the API server is not serving"),
        }
    }

    fn info(&self) -> serde_json::Value {
        json!({
            "listen": self.local_addr().map(|a| a.to_string()),
            "security": self.security,
            "access": self.config.to_json(),
            "limits": self.limiter.to_json(),
            "connections": self.gate.to_json(),
        })
    }
}

/// Accepts and serves connections until `stop` turns true; then stops accepting, lets
/// every connection finish the response it is writing (open streams end on the same
/// signal), and returns.
async fn serve(
    listener: TcpListener,
    app: Router,
    gate: Arc<ConnectionGate>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|down| *down).await; } => break,
            (stream, peer, admission) = accept_admitted(&listener, &gate, &REFUSAL) => {
                connections.spawn(serve_connection(stream, peer, admission, app.clone(), stop.clone()));
                // Finished connections are reaped as new ones come.
                while connections.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection's requests (HTTP/1.1, kept alive) until it closes, falls
/// silent past the gate's timeout, or the server stops.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    admission: Admission,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let gate = admission.gate().clone();
    // The access rules read the client's address as axum's ConnectInfo.
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gate.limits().silent_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        _ = async { let _ = stop.wait_for(|down| *down).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = outcome {
        if error.is_timeout() {
            gate.count_timed_out();
        } else {
            tracing::debug!("HTTP connection from {peer} ended: {error}");
        }
    }
    drop(admission);
}
