//! One node: the engine, gRPC server, discovery, API server and monitor as members of one
//! resource group, started in dependency order and stopped in reverse.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use crate::api::{ApiConfig, ApiServer, ApiState};
use crate::catalog::Catalog;
use crate::catalog::ResolvedModel;
use crate::discovery::{
    Announcement, ManualDiscovery, PROTOCOL, PROTOCOL_VERSION, PeerTable, PeerTableConfig,
    UdpDiscovery, UdpDiscoveryConfig,
};
use crate::discovery::{InterfaceFilter, broadcast_targets};
use crate::engine::device::{CUDA_BUILT, METAL_BUILT};
use crate::engine::{CpuMatmul, DeviceChoice, EngineConfig, InferenceEngine};
use crate::resource::{Managed, Resource, ResourceGroup, ResourceMonitor, ResourceRegistry};
use crate::server::GrpcServer;
use crate::supply::{SupplyConfig, WeightSupply};
use crate::topology::DeviceCapabilities;
use crate::trust::{ClusterTrust, OPEN_CLUSTER_WARNING, SecurityStatus};

use super::flow::{FlowConfig, RequestFlow};
use super::identity::{NodeIdentity, default_data_home};

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
    /// Who may use the HTTP API, and how much at once.
    pub api: ApiConfig,
    /// Where a registry model's files live; `Some` gives the node a weight supply: it
    /// fetches the tensors its plans need from peers or the Hub, and serves what it holds.
    pub models_dir: Option<PathBuf>,
    pub supply: SupplyConfig,
    /// Caps the memory the node announces (and plans are made with).
    pub memory_limit: Option<u64>,
}

impl NodeConfig {
    pub fn new(model: ResolvedModel) -> Self {
        NodeConfig {
            model,
            device: DeviceChoice::Auto,
            cpu_matmul: CpuMatmul::default(),
            api_listen: SocketAddr::from(([0, 0, 0, 0], 52415)),
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            data_dir: None,
            node_id: None,
            discovery: DiscoveryMode::Udp(UdpDiscoveryConfig::default()),
            peers: PeerTableConfig::default(),
            flow: FlowConfig::default(),
            monitor_interval: Duration::from_secs(5),
            trust: None,
            insecure: false,
            api: ApiConfig::default(),
            models_dir: None,
            supply: SupplyConfig::default(),
            memory_limit: None,
        }
    }
}

/// A running node.
pub struct Node {
    pub identity: NodeIdentity,
    pub registry: Arc<ResourceRegistry>,
    pub group: Arc<ResourceGroup>,
    pub flow: Arc<RequestFlow>,
    pub peers: Arc<PeerTable>,
    pub engine: Arc<Managed<InferenceEngine>>,
    pub grpc: Arc<Managed<GrpcServer>>,
    pub api: Arc<Managed<ApiServer>>,
    pub monitor: Arc<Managed<Arc<ResourceMonitor>>>,
    api_port: Arc<AtomicU16>,
}

/// The member names of the node group.
pub mod members {
    pub const ENGINE: &str = "engine";
    pub const GRPC: &str = "grpc_server";
    pub const DISCOVERY: &str = "discovery";
    pub const API: &str = "api_server";
    pub const MONITOR: &str = "monitor";
}

impl Node {
    /// Builds the node group and starts it. On failure, whatever started is stopped again
    /// and the error names the member that failed.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let grpc_listen = config.grpc_listen;
        let node = Self::build(config).await?;
        node.group.initialize().await?;
        node.flow.set_host(advertised_host(grpc_listen.ip()));
        Ok(node)
    }

    async fn build(mut config: NodeConfig) -> anyhow::Result<Node> {
        apply_trust(&mut config)?;
        let security = SecurityStatus::of(config.trust.as_deref(), config.insecure);
        let identity = match &config.data_dir {
            Some(dir) => NodeIdentity::open(dir, config.node_id.as_deref())?,
            None => NodeIdentity::open_slot(&default_data_home(), config.node_id.as_deref())?,
        };
        let node_id = identity.node_id.clone();
        let registry = ResourceRegistry::new();
        let engine_device = predicted_device(config.device);
        let mut capabilities =
            tokio::task::spawn_blocking(move || DeviceCapabilities::detect(&engine_device)).await?;
        if let Some(limit) = config.memory_limit {
            capabilities.limit_memory(limit);
        }

        let peers = PeerTable::new(&node_id, config.peers.clone(), registry.clone());
        let supply = config.models_dir.as_ref().and_then(|dir| {
            let entry = Catalog::builtin().get(&config.model.id)?.clone();
            Some(Arc::new(WeightSupply::new(
                &node_id,
                entry,
                dir.clone(),
                peers.clone(),
                config.supply.clone(),
            )))
        });
        let mut engine_config = EngineConfig::new(config.model.clone(), config.device);
        engine_config.cpu_matmul = config.cpu_matmul;
        engine_config.supply = supply.clone();
        let engine = Managed::builder("engine", InferenceEngine::new(engine_config))
            .name(format!("inference engine ({})", config.model.id))
            .config(InferenceEngine::resource_config())
            .register_in(&registry)
            .build();

        // The server's port is known once it listens; the flow and the announcements
        // read it from the same place.
        let grpc_port = Arc::new(AtomicU16::new(0));
        let flow = RequestFlow::new(
            &node_id,
            &config.model.id,
            grpc_port.clone(),
            capabilities.clone(),
            engine.clone(),
            peers.clone(),
            config.flow,
        );
        if let Some(supply) = &supply {
            flow.set_supply(supply.clone());
        }
        let server = GrpcServer::new(config.grpc_listen, flow.clone(), grpc_port.clone())
            .with_tls(config.trust.as_ref().map(|t| t.tls.server_config()));
        let grpc = Managed::builder("grpc_server", server)
            .name("gRPC server")
            .register_in(&registry)
            .build();

        let discovery: Arc<dyn crate::resource::AnyResource> = match &config.discovery {
            DiscoveryMode::Udp(udp) => {
                let (id, model_id, capabilities, port, draining) = (
                    node_id.clone(),
                    config.model.id.clone(),
                    capabilities.clone(),
                    grpc_port.clone(),
                    flow.draining_flag(),
                );
                let announce = Arc::new(move || {
                    let grpc_port = port.load(Ordering::Relaxed);
                    (grpc_port != 0).then(|| Announcement {
                        protocol: PROTOCOL.into(),
                        version: PROTOCOL_VERSION,
                        node_id: id.clone(),
                        grpc_port,
                        model_id: model_id.clone(),
                        interface_priority: 0,
                        capabilities: capabilities.clone(),
                        departing: false,
                        draining: draining.load(Ordering::Relaxed),
                        sent_at_ms: 0,
                        nonce: String::new(),
                    })
                });
                Managed::builder(
                    "discovery",
                    UdpDiscovery::new(&node_id, udp.clone(), announce, peers.clone()),
                )
                .name(format!("UDP discovery on port {}", udp.port))
                .register_in(&registry)
                .build()
            }
            DiscoveryMode::Manual(path) => {
                Managed::builder("discovery", ManualDiscovery::new(path, peers.clone()))
                    .name(format!("manual discovery from {}", path.display()))
                    .register_in(&registry)
                    .build()
            }
            DiscoveryMode::None => Managed::builder("discovery", NoDiscovery)
                .name("no discovery (a node of its own)")
                .register_in(&registry)
                .build(),
        };

        let monitor = Managed::builder(
            "monitor",
            ResourceMonitor::new(registry.clone(), config.monitor_interval),
        )
        .name("resource monitor")
        .register_in(&registry)
        .build();
        let api_server = ApiServer::new(config.api_listen, config.api.clone(), security.clone());
        let api_port = api_server.port_handle();
        let (api_config, limiter) = api_server.access();
        api_server.set_state(ApiState {
            flow: flow.clone(),
            engine: engine.clone(),
            registry: registry.clone(),
            monitor: Some(monitor.clone()),
            shutting_down: api_server.shutdown_signal(),
            security,
            config: api_config,
            limiter,
        });
        let api = Managed::builder("api_server", api_server)
            .name("HTTP API")
            .register_in(&registry)
            .build();

        let mut group = ResourceGroup::new(format!("node {node_id}"));
        if supply.is_some() {
            // The engine may need its header from a peer: discovery runs first.
            group.add(members::GRPC, grpc.clone(), &[])?;
            group.add_dyn(members::DISCOVERY, discovery, &[members::GRPC])?;
            group.add(members::ENGINE, engine.clone(), &[members::DISCOVERY])?;
            group.add(members::API, api.clone(), &[members::ENGINE])?;
        } else {
            group.add(members::ENGINE, engine.clone(), &[])?;
            group.add(members::GRPC, grpc.clone(), &[])?;
            group.add_dyn(
                members::DISCOVERY,
                discovery,
                &[members::GRPC, members::ENGINE],
            )?;
            group.add(members::API, api.clone(), &[members::DISCOVERY])?;
        }
        group.add(members::MONITOR, monitor.clone(), &[members::API])?;
        Ok(Node {
            identity,
            registry,
            group: Arc::new(group),
            flow,
            peers,
            engine,
            grpc,
            api,
            monitor,
            api_port,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.identity.node_id
    }

    /// The API's bound port (0 when it is not serving).
    pub fn api_port(&self) -> u16 {
        self.api_port.load(Ordering::Relaxed)
    }

    /// Stops every member in reverse order; all end Closed.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.group.cleanup().await?;
        Ok(())
    }
}

/// Makes the node's transport follow its trust: with a key, TLS to and from peers and
/// sealed datagrams; without one, loopback only unless `insecure` (an open cluster on a
/// shared network is anyone's), and a loud warning either way.
fn apply_trust(config: &mut NodeConfig) -> anyhow::Result<()> {
    match &config.trust {
        Some(trust) => {
            tracing::info!(
                "cluster key {}: discovery datagrams are authenticated, node-to-node gRPC uses mutual TLS",
                trust.key.key_id()
            );
            config.peers.tls = Some(trust.tls.client_config());
            if let DiscoveryMode::Udp(udp) = &mut config.discovery {
                udp.seal = Some(trust.seal.clone());
            }
        }
        None => {
            tracing::warn!("{OPEN_CLUSTER_WARNING}");
            config.peers.tls = None;
            if !config.insecure {
                let ip = config.grpc_listen.ip();
                if ip.is_unspecified() {
                    // Listening everywhere would let any host call the node.
                    config.grpc_listen.set_ip(IpAddr::from([127, 0, 0, 1]));
                    tracing::warn!(
                        "open cluster: gRPC listens on loopback only (give --cluster-key, or --insecure to listen on every interface)"
                    );
                } else if !ip.is_loopback() {
                    anyhow::bail!(
                        "gRPC would listen on {ip} without a cluster key: any host could join and read this cluster; give --cluster-key FILE, or --insecure to run open anyway"
                    );
                }
                if let DiscoveryMode::Udp(udp) = &mut config.discovery {
                    udp.loopback_only = true;
                }
            } else {
                tracing::warn!(
                    "--insecure: an open cluster announced and reachable beyond loopback"
                );
            }
        }
    }
    Ok(())
}

/// The discovery member of a node that looks for no one.
struct NoDiscovery;

impl Resource for NoDiscovery {
    const KIND: &'static str = "no_discovery";

    async fn initialize(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The device the engine will most likely run on, for the capabilities a node announces
/// before its engine has started (the engine's own report says what it really uses).
fn predicted_device(choice: DeviceChoice) -> String {
    match choice {
        DeviceChoice::Cpu => "cpu".into(),
        DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        DeviceChoice::Metal(n) => format!("metal:{n}"),
        DeviceChoice::Auto if CUDA_BUILT && std::path::Path::new("/dev/nvidia0").exists() => {
            "cuda:0".into()
        }
        DeviceChoice::Auto if METAL_BUILT && cfg!(target_os = "macos") => "metal:0".into(),
        DeviceChoice::Auto => "cpu".into(),
    }
}

/// The host a node puts in plans for itself: its listen address, or when it listens on
/// every address, its best-ranked interface's (informational: each node reaches the others
/// at the addresses it discovered).
fn advertised_host(listen: IpAddr) -> String {
    if !listen.is_unspecified() {
        return listen.to_string();
    }
    broadcast_targets(&InterfaceFilter::default())
        .ok()
        .and_then(|targets| targets.first().map(|t| t.address.to_string()))
        .unwrap_or_else(|| "127.0.0.1".into())
}
