//! Decisions the assembly makes before anything starts: how the transport follows the
//! cluster's trust, which device the node will announce, which host it names itself by.

use std::net::IpAddr;

use crate::discovery::{InterfaceFilter, broadcast_targets};
use crate::engine::DeviceChoice;
use crate::engine::model::device::{CUDA_BUILT, METAL_BUILT};
use crate::resource::Resource;
use crate::trust::OPEN_CLUSTER_WARNING;

use super::config::{DiscoveryMode, NodeConfig};

/// Makes the node's transport follow its trust: with a key, TLS to and from peers and
/// sealed datagrams; without one, loopback only unless `insecure` (an open cluster on a
/// shared network is anyone's), and a loud warning either way.
pub(super) fn apply_trust(config: &mut NodeConfig) -> anyhow::Result<()> {
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
                config.peers.loopback_only = true;
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
pub(super) struct NoDiscovery;

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
pub(super) fn predicted_device(choice: DeviceChoice) -> String {
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
pub(super) fn advertised_host(listen: IpAddr) -> String {
    if !listen.is_unspecified() {
        return listen.to_string();
    }
    broadcast_targets(&InterfaceFilter::default())
        .ok()
        .and_then(|targets| targets.first().map(|t| t.address.to_string()))
        .unwrap_or_else(|| "127.0.0.1".into())
}
