//! What a node is started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::ApiConfig;
use crate::catalog::ResolvedModel;
use crate::discovery::{PeerTableConfig, UdpDiscoveryConfig};
use crate::engine::{CpuMatmul, DeviceChoice};
use crate::node::FlowConfig;
use crate::supply::SupplyConfig;
use crate::trust::ClusterTrust;

/// How the node finds its peers.
#[derive(Debug, Clone)]
pub enum DiscoveryMode {
    Udp(UdpDiscoveryConfig),
    /// A peers file, reloaded when it changes.
    Manual(PathBuf),
    /// A node of its own.
    None,
}

/// Everything a node is started with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub model: ResolvedModel,
    pub device: DeviceChoice,
    pub cpu_matmul: CpuMatmul,
    /// Where the HTTP API listens (port 0 picks one).
    pub api_listen: SocketAddr,
    /// Where the gRPC server listens (port 0 picks one).
    pub grpc_listen: SocketAddr,
    /// None: the first free slot under the default data home.
    pub data_dir: Option<PathBuf>,
    pub node_id: Option<String>,
    pub discovery: DiscoveryMode,
    pub peers: PeerTableConfig,
    pub flow: FlowConfig,
    pub monitor_interval: Duration,
    /// The cluster key's derived secrets; None: an open cluster (see `crate::trust`).
    pub trust: Option<Arc<ClusterTrust>>,
    /// Lets an open cluster listen and announce beyond loopback.
    pub insecure: bool,
    /// Per-kind caps on the gRPC messages this node receives.
    pub grpc_limits: crate::server::MessageLimits,
    /// Who may use the HTTP API, and how much at once.
    pub api: ApiConfig,
    /// Connection caps and deadlines of the API and gRPC servers (each its own).
    pub connections: crate::listener::ConnectionLimits,
    /// Where a registry model's files live; `Some` gives the node a weight supply: it
    /// fetches the tensors its plans need from peers or the Hub, and serves what it holds.
    pub models_dir: Option<PathBuf>,
    pub supply: SupplyConfig,
    /// Caps the memory the node announces (and plans are made with).
    pub memory_limit: Option<u64>,
    /// Bytes of the engine's prefix cache (0 keeps no prefixes).
    pub prefix_cache_bytes: usize,
    /// Faults to inject, switched at run time through `POST /v1/admin/faults` (tests and
    /// `scripts/chaos.sh`; `--enable-fault-injection`). None in normal use.
    pub faults: Option<Arc<crate::faults::Faults>>,
}

impl NodeConfig {
    pub fn new(model: ResolvedModel) -> Self {
        NodeConfig {
            model,
            device: DeviceChoice::Auto,
            cpu_matmul: CpuMatmul::default(),
            // An open API is anyone's who reaches it: loopback unless told otherwise.
            api_listen: SocketAddr::from(([127, 0, 0, 1], 52415)),
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            data_dir: None,
            node_id: None,
            discovery: DiscoveryMode::Udp(UdpDiscoveryConfig::default()),
            peers: PeerTableConfig::default(),
            flow: FlowConfig::default(),
            monitor_interval: Duration::from_secs(5),
            trust: None,
            insecure: false,
            grpc_limits: crate::server::MessageLimits::default(),
            api: ApiConfig::default(),
            connections: crate::listener::ConnectionLimits::default(),
            models_dir: None,
            supply: SupplyConfig::default(),
            memory_limit: None,
            prefix_cache_bytes: crate::engine::serve::prefix_cache::DEFAULT_PREFIX_CACHE_BYTES,
            faults: None,
        }
    }
}
