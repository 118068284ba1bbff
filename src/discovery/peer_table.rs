//! The peers a node knows: one handle per peer, health-checked before the peer joins, at a
//! bounded rate afterwards, and retired when its announcements stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;

use crate::peer::{GrpcPeerHandle, PeerTimeouts};
use crate::resource::{Managed, ResourceConfig, ResourceRegistry, ResourceState};
use crate::topology::DeviceCapabilities;

/// The default of [`PeerTableConfig::max_peers`].
pub const DEFAULT_MAX_PEERS: usize = 256;

/// Timing of the peer table. The defaults make a killed node leave its peers' view
/// within 3 seconds.
#[derive(Debug, Clone)]
pub struct PeerTableConfig {
    /// A peer not heard from for this long is retired.
    pub peer_timeout: Duration,
    /// How often each joined peer is health-checked (and maintenance runs).
    pub health_interval: Duration,
    /// How often a peer that failed to connect is tried again.
    pub retry_interval: Duration,
    pub timeouts: PeerTimeouts,
    /// Lifecycle settings of each peer handle.
    pub handle_config: ResourceConfig,
    /// With a cluster key: TLS to every peer, and no peer taken on from a plan alone.
    pub tls: Option<ClientTlsConfig>,
    /// The most peers the table keeps; sightings of new ones past it are refused (an open
    /// cluster's neighbours could otherwise make it hold any number of handles).
    pub max_peers: usize,
    /// An open node not told `--insecure`: only peers at loopback addresses are taken on
    /// (from announcements, the peers file or plans), so that no host on the network is
    /// listed or dialled.
    pub loopback_only: bool,
}

impl Default for PeerTableConfig {
    fn default() -> Self {
        let timeouts = PeerTimeouts::default();
        PeerTableConfig {
            peer_timeout: Duration::from_millis(2500),
            health_interval: Duration::from_millis(500),
            retry_interval: Duration::from_secs(1),
            handle_config: ResourceConfig {
                initialize_timeout: timeouts.connect + timeouts.health,
                health_timeout: timeouts.health,
                // Three failed checks half a second apart: a dead peer is out in ~1.5 s.
                health_failure_threshold: 3,
                ..ResourceConfig::default()
            },
            timeouts,
            tls: None,
            max_peers: DEFAULT_MAX_PEERS,
            loopback_only: false,
        }
    }
}

/// A peer as the rest of the node sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerInfo {
    pub node_id: String,
    /// host:port of its gRPC server.
    pub address: String,
    pub model_id: String,
    pub capabilities: Option<DeviceCapabilities>,
    /// The state of this node's handle on the peer.
    pub state: ResourceState,
    /// The peer said it is draining: it finishes what it has, takes no new plans.
    pub draining: bool,
    /// Its engine serves, as its last health answer said. A peer whose engine is down
    /// stays joined (results and control messages still reach it) but runs no layers.
    pub serving: bool,
}

impl PeerInfo {
    /// Joined: the handle is usable.
    pub fn is_joined(&self) -> bool {
        self.state.is_usable()
    }
}

struct Entry {
    address: String,
    priority: u8,
    model_id: String,
    capabilities: Option<DeviceCapabilities>,
    last_seen: Instant,
    last_attempt: Option<Instant>,
    handle: Arc<Managed<GrpcPeerHandle>>,
    /// Which handle this is: a new number for each handle the table makes, so that a
    /// node restarted (or moved) is told apart from the one before it.
    incarnation: u64,
    /// The handle's record of whether the peer's engine serves (see
    /// [`GrpcPeerHandle::serving_flag`]).
    serving: Arc<AtomicBool>,
    /// What its latest announcement said.
    draining: bool,
}

/// What discovery tells the table about a peer.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub node_id: String,
    pub address: String,
    /// The sender's ranking of the link it came over (higher is better).
    pub priority: u8,
    pub model_id: String,
    pub capabilities: Option<DeviceCapabilities>,
}

/// The peer table of one node.
pub struct PeerTable {
    self_id: String,
    config: PeerTableConfig,
    registry: Arc<ResourceRegistry>,
    entries: Mutex<HashMap<String, Entry>>,
    joined: watch::Sender<Vec<PeerInfo>>,
    /// Sightings of new peers refused because the table was full.
    refused_full: std::sync::atomic::AtomicU64,
    /// Sightings and plan addresses refused for being off loopback (`loopback_only`).
    refused_off_loopback: std::sync::atomic::AtomicU64,
    /// The incarnation the next handle gets.
    next_incarnation: std::sync::atomic::AtomicU64,
}

impl PeerTable {
    pub fn new(
        self_id: impl Into<String>,
        config: PeerTableConfig,
        registry: Arc<ResourceRegistry>,
    ) -> Arc<Self> {
        Arc::new(PeerTable {
            self_id: self_id.into(),
            config,
            registry,
            entries: Mutex::new(HashMap::new()),
            joined: watch::channel(Vec::new()).0,
            refused_full: std::sync::atomic::AtomicU64::new(0),
            refused_off_loopback: std::sync::atomic::AtomicU64::new(0),
            next_incarnation: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub fn config(&self) -> &PeerTableConfig {
        &self.config
    }

    /// Records that a peer was heard from. A new peer (or one at a better address) gets
    /// a new handle, initialized at once in the background; it joins when that succeeds.
    /// Returns whether the peer was new to the table (so that discovery can answer with
    /// an announcement of its own at once, instead of at its next tick).
    pub fn observe(self: &Arc<Self>, sighting: Sighting) -> bool {
        if sighting.node_id == self.self_id {
            return false;
        }
        if !self.may_reach(&sighting.node_id, &sighting.address) {
            return false;
        }
        let now = Instant::now();
        let mut is_new = false;
        let fresh_handle = {
            let mut entries = self.lock();
            let full = entries.len() >= self.config.max_peers;
            match entries.get_mut(&sighting.node_id) {
                Some(entry) => {
                    // Another address for the same node: move only to a better-ranked link,
                    // or when the current one has gone quiet.
                    let stale = now - entry.last_seen > self.config.peer_timeout / 2;
                    if entry.address != sighting.address
                        && (sighting.priority > entry.priority || stale)
                    {
                        let (handle, serving) = self.new_handle(&sighting);
                        let old = std::mem::replace(&mut entry.handle, handle);
                        entry.incarnation = self.new_incarnation();
                        entry.serving = serving;
                        entry.address = sighting.address.clone();
                        entry.priority = sighting.priority;
                        entry.last_seen = now;
                        entry.last_attempt = Some(now);
                        retire(old);
                        Some(entry.handle.clone())
                    } else {
                        if entry.address == sighting.address {
                            entry.priority = sighting.priority;
                            entry.last_seen = now;
                        }
                        // Manual sightings know neither; they keep what the peer told us.
                        if sighting.capabilities.is_some() {
                            entry.capabilities = sighting.capabilities.clone();
                        }
                        if !sighting.model_id.is_empty() {
                            entry.model_id = sighting.model_id.clone();
                        }
                        None
                    }
                }
                None if full => {
                    let refused = self
                        .refused_full
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if refused == 0 {
                        tracing::warn!(
                            "the peer table is full ({} peers): {} and later newcomers are refused",
                            self.config.max_peers,
                            sighting.node_id
                        );
                    }
                    return false;
                }
                None => {
                    let (handle, serving) = self.new_handle(&sighting);
                    entries.insert(
                        sighting.node_id.clone(),
                        Entry {
                            address: sighting.address.clone(),
                            priority: sighting.priority,
                            model_id: sighting.model_id.clone(),
                            capabilities: sighting.capabilities.clone(),
                            last_seen: now,
                            last_attempt: Some(now),
                            handle: handle.clone(),
                            incarnation: self.new_incarnation(),
                            serving,
                            draining: false,
                        },
                    );
                    tracing::info!(
                        "discovered peer {} at {}",
                        sighting.node_id,
                        sighting.address
                    );
                    is_new = true;
                    Some(handle)
                }
            }
        };
        if let Some(handle) = fresh_handle {
            let table = self.clone();
            tokio::spawn(async move {
                // Failures are recorded on the handle; maintenance retries.
                let _ = handle.initialize().await;
                table.publish();
            });
        }
        is_new
    }

    /// The handle on `node_id`, taking the peer on at `address` if the table does not
    /// know it yet. Plans carry every node's address for this: in an open cluster a node
    /// may be asked to forward to a peer whose announcement has not reached it yet (they
    /// go out twice a second), and the request must not fail for that. In a keyed cluster
    /// a plan alone never makes a peer: refused unless the node proved the key to this one
    /// (an authenticated datagram, or the operator's peers file); an open node that keeps
    /// to loopback refuses an address off loopback. The error says why.
    pub fn adopt(
        self: &Arc<Self>,
        node_id: &str,
        address: &str,
        model_id: &str,
    ) -> Result<Arc<Managed<GrpcPeerHandle>>, String> {
        if let Some(entry) = self.lock().get_mut(node_id) {
            // In use: not to be retired as silent while a request needs it.
            entry.last_seen = Instant::now();
            return Ok(entry.handle.clone());
        }
        if self.is_keyed() {
            return Err(format!(
                "node {node_id} has not proven the cluster key to node {}",
                self.self_id
            ));
        }
        if !self.may_reach(node_id, address) {
            return Err(format!(
                "node {node_id} is at {address}, off loopback, and node {} is open: it keeps to loopback (give every node --cluster-key, or --insecure)",
                self.self_id
            ));
        }
        let sighting = Sighting {
            node_id: node_id.to_string(),
            address: address.to_string(),
            priority: 0,
            model_id: model_id.to_string(),
            capabilities: None,
        };
        self.observe(sighting.clone());
        Ok(match self.handle(node_id) {
            Some(handle) => handle,
            // Only our own id is never taken on; a plan naming us as a peer is a bug of the
            // sender's, and a handle that fails on use says so.
            None => self.new_handle(&sighting).0,
        })
    }

    /// Whether this node may take on a peer at `address`: anywhere, unless it keeps to
    /// loopback. A refusal is counted (and logged, the first time at warning level).
    fn may_reach(&self, node_id: &str, address: &str) -> bool {
        if !self.config.loopback_only || is_loopback_address(address) {
            return true;
        }
        let refused = self
            .refused_off_loopback
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if refused == 0 {
            tracing::warn!(
                "refused peer {node_id} at {address}: an open node takes peers on loopback only (give every node --cluster-key, or --insecure)"
            );
        } else {
            tracing::debug!("refused peer {node_id} at {address}: off loopback");
        }
        false
    }

    /// Peers refused for being off loopback (an open node that keeps to loopback).
    pub fn refused_off_loopback(&self) -> u64 {
        self.refused_off_loopback
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sightings of new peers refused because the table was full.
    pub fn refused_full(&self) -> u64 {
        self.refused_full.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the cluster has a key (peers must prove it).
    pub fn is_keyed(&self) -> bool {
        self.config.tls.is_some()
    }

    /// Whether a plan may name `node_id`: always in an open cluster; in a keyed one, only
    /// this node and peers that proved the key (they are in the table).
    pub fn vouches_for(&self, node_id: &str) -> bool {
        !self.is_keyed() || node_id == self.self_id || self.lock().contains_key(node_id)
    }

    /// Records whether a peer says it is draining (its announcements carry it): plans
    /// leave a draining peer out, and requests move off it.
    pub fn set_draining(&self, node_id: &str, draining: bool) {
        let changed = match self.lock().get_mut(node_id) {
            Some(entry) if entry.draining != draining => {
                entry.draining = draining;
                true
            }
            _ => false,
        };
        if changed {
            if draining {
                tracing::info!("peer {node_id} is draining");
            }
            self.publish();
        }
    }

    /// A peer said it is leaving (or left the peers file): retire it now.
    pub fn forget(&self, node_id: &str) {
        let removed = self.lock().remove(node_id);
        if let Some(entry) = removed {
            tracing::info!("peer {node_id} left");
            retire(entry.handle);
            self.publish();
        }
    }

    /// One round of maintenance: retire peers not heard from in time, health-check the
    /// joined ones, retry the others (at most once per retry interval).
    pub async fn maintain(&self) {
        let now = Instant::now();
        let (expired, work): (Vec<_>, Vec<_>) = {
            let mut entries = self.lock();
            let expired: Vec<String> = entries
                .iter()
                .filter(|(_, e)| now - e.last_seen > self.config.peer_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            let expired: Vec<(String, Entry)> = expired
                .into_iter()
                .filter_map(|id| entries.remove(&id).map(|e| (id, e)))
                .collect();
            let mut work = Vec::new();
            for entry in entries.values_mut() {
                let state = entry.handle.state();
                let retry_due = entry
                    .last_attempt
                    .is_none_or(|t| now - t >= self.config.retry_interval);
                if state.is_usable() {
                    work.push((entry.handle.clone(), false));
                } else if matches!(state, ResourceState::Uninitialized | ResourceState::Error)
                    && retry_due
                {
                    entry.last_attempt = Some(now);
                    work.push((entry.handle.clone(), true));
                }
            }
            (expired, work)
        };
        for (id, entry) in expired {
            tracing::info!("peer {id} timed out");
            retire(entry.handle);
        }
        join_all(work.into_iter().map(|(handle, connect)| async move {
            if connect {
                let _ = handle.initialize().await;
            } else {
                handle.check_health().await;
            }
        }))
        .await;
        self.publish();
    }

    /// Refreshes the joined view; waiters on `subscribe` see the change.
    pub fn publish(&self) {
        let joined: Vec<PeerInfo> = self
            .peers()
            .into_iter()
            .filter(PeerInfo::is_joined)
            .collect();
        self.joined.send_if_modified(|current| {
            if *current != joined {
                *current = joined;
                true
            } else {
                false
            }
        });
    }

    /// Every known peer, joined or not, by node id.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let entries = self.lock();
        let mut peers: Vec<PeerInfo> = entries
            .iter()
            .map(|(id, e)| PeerInfo {
                node_id: id.clone(),
                address: e.address.clone(),
                model_id: e.model_id.clone(),
                capabilities: e.capabilities.clone(),
                state: e.handle.state(),
                draining: e.draining,
                serving: e.serving.load(Ordering::Relaxed),
            })
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        peers
    }

    /// The joined peers, as last published.
    pub fn joined(&self) -> Vec<PeerInfo> {
        self.joined.borrow().clone()
    }

    /// The joined peers, on every change: wait on it instead of polling.
    pub fn subscribe(&self) -> watch::Receiver<Vec<PeerInfo>> {
        self.joined.subscribe()
    }

    /// Whether a known peer's engine serves, as its last health answer said (false for
    /// a peer the table does not know).
    pub fn serving(&self, node_id: &str) -> bool {
        self.lock()
            .get(node_id)
            .is_some_and(|e| e.serving.load(Ordering::Relaxed))
    }

    /// The handle on a known peer.
    pub fn handle(&self, node_id: &str) -> Option<Arc<Managed<GrpcPeerHandle>>> {
        self.lock().get(node_id).map(|e| e.handle.clone())
    }

    /// The incarnation of the handle the table holds on `node_id` (None when it holds
    /// none): it changes whenever the handle is replaced, by a restarted or moved node.
    pub fn incarnation(&self, node_id: &str) -> Option<u64> {
        self.lock().get(node_id).map(|e| e.incarnation)
    }

    /// Sets a peer's capabilities (manual peers learn them from the peer itself).
    pub fn set_capabilities(
        &self,
        node_id: &str,
        capabilities: DeviceCapabilities,
        model_id: String,
    ) {
        if let Some(entry) = self.lock().get_mut(node_id) {
            entry.capabilities = Some(capabilities);
            entry.model_id = model_id;
        }
    }

    /// Retires every peer (the node is shutting down).
    pub async fn clear(&self) {
        let entries: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        join_all(entries.iter().map(|e| e.handle.cleanup())).await;
        self.publish();
    }

    fn new_incarnation(&self) -> u64 {
        self.next_incarnation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A handle on the peer `sighting` names, and its record of whether the peer serves.
    fn new_handle(&self, sighting: &Sighting) -> (Arc<Managed<GrpcPeerHandle>>, Arc<AtomicBool>) {
        let handle =
            GrpcPeerHandle::new(&sighting.node_id, &sighting.address, self.config.timeouts)
                .with_tls(self.config.tls.clone());
        let serving = handle.serving_flag();
        let managed = Managed::builder(format!("peer:{}", sighting.node_id), handle)
            .name(format!("peer {} at {}", sighting.node_id, sighting.address))
            .config(self.config.handle_config.clone())
            .register_in(&self.registry)
            .build();
        (managed, serving)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `address` (host:port, as sightings and plans carry it) is on loopback.
fn is_loopback_address(address: &str) -> bool {
    match address.parse::<std::net::SocketAddr>() {
        Ok(address) => address.ip().is_loopback(),
        Err(_) => address
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

/// Cleans a handle up in the background; dropping the last reference removes it from
/// the registry.
fn retire(handle: Arc<Managed<GrpcPeerHandle>>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = handle.cleanup().await;
        });
    }
}
