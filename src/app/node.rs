//! One node: the engine, gRPC server, discovery, API server and monitor as members of one
//! resource group, started in dependency order and stopped in reverse.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::Context;

use crate::api::ApiServer;
use crate::discovery::PeerTable;
use crate::engine::InferenceEngine;
use crate::engine::group::GroupHub;
use crate::node::{NodeIdentity, RequestFlow, default_data_home};
use crate::resource::{Managed, ResourceGroup, ResourceMonitor, ResourceRegistry};
use crate::server::GrpcServer;
use crate::topology::DeviceCapabilities;
use crate::trust::SecurityStatus;

use super::config::NodeConfig;
use super::parts::Parts;
use super::policy::{advertised_host, apply_trust, predicted_device};

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
        // Group links listen where gRPC does (loopback in an open cluster), on a port of
        // their own that the node announces.
        let group_listener = std::net::TcpListener::bind((config.grpc_listen.ip(), 0))
            .context("cannot listen for tensor-parallel group links")?;
        capabilities.group_link_port = group_listener.local_addr()?.port();
        let peers = PeerTable::new(&node_id, config.peers.clone(), registry.clone());
        let groups = GroupHub::new(node_id.clone());
        let parts = Parts {
            config,
            node_id,
            registry,
            capabilities,
            peers,
            grpc_port: Arc::new(AtomicU16::new(0)),
            groups,
        };

        let supply = parts.supply();
        let engine = parts.engine(supply.as_ref());
        let flow = parts.flow(&engine, supply.as_ref());
        parts.group_links(&flow, group_listener)?;
        let (grpc, grpc_connections) = parts.grpc(&flow);
        let discovery = parts.discovery(&flow);
        let monitor = parts.monitor();
        let (api, api_port) = parts.api(security, &flow, &engine, &monitor, grpc_connections);

        let mut group = ResourceGroup::new(format!("node {}", parts.node_id));
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
            registry: parts.registry,
            group: Arc::new(group),
            flow,
            peers: parts.peers,
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
