//! One node: the engine, gRPC server, discovery, API server and monitor as members of one
//! resource group, started in dependency order and stopped in reverse.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::api::{ApiServer, ApiState};
use crate::catalog::Catalog;
use crate::discovery::{
    Announcement, ManualDiscovery, PROTOCOL, PROTOCOL_VERSION, PeerTable, UdpDiscovery,
};
use crate::engine::{EngineConfig, InferenceEngine};
use crate::node::{NodeIdentity, RequestFlow, default_data_home};
use crate::resource::{Managed, ResourceGroup, ResourceMonitor, ResourceRegistry};
use crate::server::GrpcServer;
use crate::supply::WeightSupply;
use crate::topology::DeviceCapabilities;
use crate::trust::SecurityStatus;

use super::config::{DiscoveryMode, NodeConfig};
use super::policy::{NoDiscovery, advertised_host, apply_trust, predicted_device};

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
            .with_tls(config.trust.as_ref().map(|t| t.tls.server_config()))
            .with_limits(config.grpc_limits)
            .with_connection_limits(config.connections);
        let grpc_connections = server.connection_gate();
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
                        sender_addresses: Vec::new(),
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
        let api_server = ApiServer::new(config.api_listen, config.api.clone(), security.clone())
            .with_connection_limits(config.connections);
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
            peers: peers.clone(),
            timing: Default::default(),
            connections: vec![api_server.connection_gate(), grpc_connections],
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
