//! The API server as a resource: bind, serve, shut down gracefully (ending open streams).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::ApiConfig;
use super::limit::RequestLimiter;
use super::state::ApiState;
use crate::resource::Resource;
use crate::trust::SecurityStatus;

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
        }
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
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {listen}"))?;
        let local_addr = listener.local_addr()?;
        self.listen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_port(local_addr.port());
        self.shutting_down.send_replace(false);
        let mut stop = self.shutting_down.subscribe();
        let app = super::router(state);
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|down| *down).await;
            })
            .await
        });
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
        })
    }
}
