//! What the API handlers reach: the node's flow, resources and identity.

use std::sync::Arc;

use tokio::sync::watch;

use super::config::ApiConfig;
use super::limit::RequestLimiter;
use super::timing::TokenTiming;
use crate::discovery::PeerTable;
use crate::engine::InferenceEngine;
use crate::node::RequestFlow;
use crate::resource::{Managed, ResourceMonitor, ResourceRegistry};
use crate::trust::SecurityStatus;

/// Shared by every handler.
#[derive(Clone)]
pub struct ApiState {
    pub flow: Arc<RequestFlow>,
    pub engine: Arc<Managed<InferenceEngine>>,
    pub registry: Arc<ResourceRegistry>,
    /// The monitor, once the node has one (its report adds the monitor's rounds).
    pub monitor: Option<Arc<Managed<Arc<ResourceMonitor>>>>,
    /// Turns true when the server shuts down, so that open streams end.
    pub shutting_down: watch::Receiver<bool>,
    /// The node's cluster security, shown in /v1/topology.
    pub security: SecurityStatus,
    /// Keys, CORS and limits of the API.
    pub config: Arc<ApiConfig>,
    pub limiter: Arc<RequestLimiter>,
    /// The peer table (the cluster view of the web UI).
    pub peers: Arc<PeerTable>,
    /// Token timings of the generations served here (`/metrics`).
    pub timing: Arc<TokenTiming>,
    /// The connection caps and counts of the node's servers (API, gRPC), for `/metrics`.
    pub connections: Vec<Arc<crate::listener::ConnectionGate>>,
}
