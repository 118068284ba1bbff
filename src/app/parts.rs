//! The members of a node's group, each built in a step of its own from what the node is
//! made of (its config, id, registry, capabilities, peer table and gRPC port).

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::api::{ApiServer, ApiState};
use crate::catalog::Catalog;
use crate::discovery::{
    Announcement, ManualDiscovery, PROTOCOL, PROTOCOL_VERSION, PeerTable, UdpDiscovery,
};
use crate::engine::group::GroupHub;
use crate::engine::{EngineConfig, InferenceEngine, WeightSupplier};
use crate::listener::ConnectionGate;
use crate::node::RequestFlow;
use crate::peer::GroupLinks;
use crate::resource::{AnyResource, Managed, ResourceMonitor, ResourceRegistry};
use crate::server::GrpcServer;
use crate::supply::WeightSupply;
use crate::topology::DeviceCapabilities;
use crate::trust::SecurityStatus;

use super::config::{DiscoveryMode, NodeConfig};
use super::policy::NoDiscovery;

/// What every member of a node is built from.
pub(super) struct Parts {
    pub(super) config: NodeConfig,
    pub(super) node_id: String,
    pub(super) registry: Arc<ResourceRegistry>,
    pub(super) capabilities: DeviceCapabilities,
    pub(super) peers: Arc<PeerTable>,
    /// The gRPC server's port, once it listens: the flow and the announcements read it.
    pub(super) grpc_port: Arc<AtomicU16>,
    /// The node's hub for the tensor-parallel groups it leads or follows.
    pub(super) groups: Arc<GroupHub>,
}

impl Parts {
    /// A registry model's supply of weights from peers or the Hub (None for a model file
    /// outside the registry, or without a models directory).
    pub(super) fn supply(&self) -> Option<Arc<WeightSupply>> {
        let config = &self.config;
        let dir = config.models_dir.as_ref()?;
        let entry = Catalog::builtin().get(&config.model.id)?.clone();
        Some(Arc::new(WeightSupply::new(
            &self.node_id,
            entry,
            dir.clone(),
            self.peers.clone(),
            config.supply.clone(),
        )))
    }

    pub(super) fn engine(
        &self,
        supply: Option<&Arc<WeightSupply>>,
    ) -> Arc<Managed<InferenceEngine>> {
        let config = &self.config;
        let mut engine_config = EngineConfig::new(config.model.clone(), config.device);
        engine_config.cpu_matmul = config.cpu_matmul;
        engine_config.prefix_cache_bytes = config.prefix_cache_bytes;
        engine_config.supply = supply.map(|s| s.clone() as Arc<dyn WeightSupplier>);
        engine_config.faults = config.faults.clone();
        engine_config.groups = Some(self.groups.clone());
        Managed::builder("engine", InferenceEngine::new(engine_config))
            .name(format!("inference engine ({})", config.model.id))
            .config(InferenceEngine::resource_config())
            .register_in(&self.registry)
            .build()
    }

    pub(super) fn flow(
        &self,
        engine: &Arc<Managed<InferenceEngine>>,
        supply: Option<&Arc<WeightSupply>>,
    ) -> Arc<RequestFlow> {
        let flow = RequestFlow::new(
            &self.node_id,
            &self.config.model.id,
            self.grpc_port.clone(),
            self.capabilities.clone(),
            engine.clone(),
            self.peers.clone(),
            self.config.flow,
        );
        if let Some(supply) = supply {
            flow.set_supply(supply.clone());
        }
        if let Some(faults) = &self.config.faults {
            flow.set_faults(faults.clone());
        }
        flow
    }

    /// The node's group links, accepting on `listener` (bound where gRPC listens, its
    /// port announced in the node's capabilities): mutual TLS in a keyed cluster.
    pub(super) fn group_links(
        &self,
        flow: &RequestFlow,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<()> {
        let tls = self.config.trust.as_ref().map(|t| t.tls.clone());
        let links = GroupLinks::new(&self.groups, tokio::runtime::Handle::current(), tls);
        links.accept(listener)?;
        flow.set_group_links(links);
        Ok(())
    }

    /// The gRPC server, with the gate that counts and caps its connections (for /metrics).
    pub(super) fn grpc(
        &self,
        flow: &Arc<RequestFlow>,
    ) -> (Arc<Managed<GrpcServer>>, Arc<ConnectionGate>) {
        let config = &self.config;
        let server = GrpcServer::new(config.grpc_listen, flow.clone(), self.grpc_port.clone())
            .with_tls(config.trust.as_ref().map(|t| t.tls.server_config()))
            .with_limits(config.grpc_limits)
            .with_connection_limits(config.connections);
        let gate = server.connection_gate();
        let grpc = Managed::builder("grpc_server", server)
            .name("gRPC server")
            .register_in(&self.registry)
            .build();
        (grpc, gate)
    }

    /// UDP discovery (announcing the node while its gRPC server serves, and whether it
    /// drains), the peers file, or none.
    pub(super) fn discovery(&self, flow: &Arc<RequestFlow>) -> Arc<dyn AnyResource> {
        let (registry, peers) = (&self.registry, &self.peers);
        match &self.config.discovery {
            DiscoveryMode::Udp(udp) => {
                let (id, model_id, capabilities, port, draining) = (
                    self.node_id.clone(),
                    self.config.model.id.clone(),
                    self.capabilities.clone(),
                    self.grpc_port.clone(),
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
                    UdpDiscovery::new(&self.node_id, udp.clone(), announce, peers.clone()),
                )
                .name(format!("UDP discovery on port {}", udp.port))
                .register_in(registry)
                .build()
            }
            DiscoveryMode::Manual(path) => {
                Managed::builder("discovery", ManualDiscovery::new(path, peers.clone()))
                    .name(format!("manual discovery from {}", path.display()))
                    .register_in(registry)
                    .build()
            }
            DiscoveryMode::None => Managed::builder("discovery", NoDiscovery)
                .name("no discovery (a node of its own)")
                .register_in(registry)
                .build(),
        }
    }

    pub(super) fn monitor(&self) -> Arc<Managed<Arc<ResourceMonitor>>> {
        Managed::builder(
            "monitor",
            ResourceMonitor::new(self.registry.clone(), self.config.monitor_interval),
        )
        .name("resource monitor")
        .register_in(&self.registry)
        .build()
    }

    /// The HTTP API over the flow, the engine and every resource; with the handle of its
    /// bound port.
    pub(super) fn api(
        &self,
        security: SecurityStatus,
        flow: &Arc<RequestFlow>,
        engine: &Arc<Managed<InferenceEngine>>,
        monitor: &Arc<Managed<Arc<ResourceMonitor>>>,
        grpc_connections: Arc<ConnectionGate>,
    ) -> (Arc<Managed<ApiServer>>, Arc<AtomicU16>) {
        let config = &self.config;
        let api_server = ApiServer::new(config.api_listen, config.api.clone(), security.clone())
            .with_connection_limits(config.connections);
        let api_port = api_server.port_handle();
        let (api_config, limiter) = api_server.access();
        api_server.set_state(ApiState {
            flow: flow.clone(),
            engine: engine.clone(),
            registry: self.registry.clone(),
            monitor: Some(monitor.clone()),
            shutting_down: api_server.shutdown_signal(),
            security,
            config: api_config,
            limiter,
            peers: self.peers.clone(),
            timing: Default::default(),
            connections: vec![api_server.connection_gate(), grpc_connections],
        });
        let api = Managed::builder("api_server", api_server)
            .name("HTTP API")
            .register_in(&self.registry)
            .build();
        (api, api_port)
    }
}
