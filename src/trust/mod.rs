//! Cluster trust: one shared secret (the cluster key) decides who is a member.
//!
//! With a key, a node authenticates every discovery datagram it sends and refuses the
//! ones that do not carry the key's MAC, are stale or replayed ([`DatagramSeal`]), and
//! speaks to its peers only over mutually authenticated TLS whose certificates chain to a
//! CA that only key holders can derive ([`NodeTls`]). Without a key the node is *open*:
//! anyone who can reach it may join, read and steer it, so it keeps to loopback unless
//! told `--insecure`. docs/SECURITY.md has the threat model.

mod key;
mod seal;
mod tls;

pub use key::{ClusterKey, KeyError, read_private_file};
pub use seal::{DatagramSeal, SealError, TAG_BYTES, new_nonce, now_ms};
pub use tls::{GROUP_ALPN, NodeTls, TLS_SERVER_NAME};

use std::sync::Arc;

/// Everything a keyed node needs, built once from the key at start.
pub struct ClusterTrust {
    pub key: ClusterKey,
    pub seal: Arc<DatagramSeal>,
    pub tls: NodeTls,
}

impl ClusterTrust {
    pub fn new(key: ClusterKey) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(ClusterTrust {
            seal: Arc::new(DatagramSeal::new(&key)),
            tls: NodeTls::new(&key)?,
            key,
        }))
    }
}

impl std::fmt::Debug for ClusterTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterTrust(key {})", self.key.key_id())
    }
}

/// Warns operators of an open cluster, at start, in /v1/topology and in the report.
pub const OPEN_CLUSTER_WARNING: &str = "this cluster is OPEN: no cluster key, so any host that can reach this node can join the cluster, read prompts and answers, and steer requests; start every node with --cluster-key FILE (make one with `exo keygen --out cluster.key`)";

/// What a node says about its own security, for people and tools.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SecurityStatus {
    /// "keyed" or "open".
    pub cluster: &'static str,
    /// A public name of the cluster key (equal on every member), when there is one.
    pub key_id: Option<String>,
    pub discovery_authenticated: bool,
    pub grpc_tls: bool,
    /// An open cluster allowed beyond loopback (`--insecure`).
    pub insecure: bool,
    pub warning: Option<&'static str>,
}

impl SecurityStatus {
    pub fn of(trust: Option<&ClusterTrust>, insecure: bool) -> Self {
        SecurityStatus {
            cluster: if trust.is_some() { "keyed" } else { "open" },
            key_id: trust.map(|t| t.key.key_id()),
            discovery_authenticated: trust.is_some(),
            grpc_tls: trust.is_some(),
            insecure,
            warning: trust.is_none().then_some(OPEN_CLUSTER_WARNING),
        }
    }
}
