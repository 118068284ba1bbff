//! UDP broadcast discovery: announce this node on every suitable interface, listen for
//! the others, and keep the peer table up to date.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::announcement::{Announcement, DatagramStats, MAX_DATAGRAM_BYTES};
use super::interfaces::{InterfaceFilter, broadcast_targets};
use super::peer_table::{PeerTable, Sighting};
use crate::resource::Resource;
use crate::trust::{DatagramSeal, new_nonce, now_ms};

/// The port every node announces on and listens to, unless told otherwise. All nodes of
/// a host share it (SO_REUSEADDR/SO_REUSEPORT; broadcasts reach every listener), so
/// several nodes on one host find each other with no ports to hand out.
pub const DEFAULT_DISCOVERY_PORT: u16 = 52416;

#[derive(Debug, Clone)]
pub struct UdpDiscoveryConfig {
    pub port: u16,
    pub announce_interval: Duration,
    pub filter: InterfaceFilter,
    /// With a cluster key: datagrams are sealed and only sealed ones are accepted.
    pub seal: Option<Arc<DatagramSeal>>,
    /// Announce on loopback interfaces only, and hear only datagrams from loopback (an
    /// open cluster not told `--insecure`).
    pub loopback_only: bool,
}

impl Default for UdpDiscoveryConfig {
    fn default() -> Self {
        UdpDiscoveryConfig {
            port: DEFAULT_DISCOVERY_PORT,
            announce_interval: Duration::from_millis(500),
            filter: InterfaceFilter::default(),
            seal: None,
            loopback_only: false,
        }
    }
}

/// What this node announces, built fresh each time (its gRPC port is only known once
/// the server listens). None: nothing to announce yet.
pub type AnnouncementSource = Arc<dyn Fn() -> Option<Announcement> + Send + Sync>;

struct Running {
    socket: Arc<UdpSocket>,
    tasks: Vec<JoinHandle<()>>,
}

/// The UDP discovery resource.
pub struct UdpDiscovery {
    config: UdpDiscoveryConfig,
    announce: AnnouncementSource,
    peers: Arc<PeerTable>,
    stats: Arc<DatagramStats>,
    self_id: String,
    running: Mutex<Option<Running>>,
}

impl UdpDiscovery {
    pub fn new(
        self_id: impl Into<String>,
        config: UdpDiscoveryConfig,
        announce: AnnouncementSource,
        peers: Arc<PeerTable>,
    ) -> Self {
        UdpDiscovery {
            config,
            announce,
            peers,
            stats: Arc::new(DatagramStats::default()),
            self_id: self_id.into(),
            running: Mutex::new(None),
        }
    }

    pub fn stats(&self) -> &Arc<DatagramStats> {
        &self.stats
    }

    pub fn peers(&self) -> &Arc<PeerTable> {
        &self.peers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One socket for sending and receiving, shareable by every node of the host.
    fn bind(port: u16) -> anyhow::Result<UdpSocket> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_broadcast(true)?;
        socket.set_nonblocking(true)?;
        let address = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        socket
            .bind(&SockAddr::from(address))
            .with_context(|| format!("cannot bind UDP discovery port {port}"))?;
        Ok(UdpSocket::from_std(socket.into())?)
    }
}

/// Sends `announcement` to every target's broadcast address.
async fn announce_once(
    socket: &UdpSocket,
    config: &UdpDiscoveryConfig,
    stats: &DatagramStats,
    mut announcement: Announcement,
) {
    let targets = match broadcast_targets(&config.filter) {
        Ok(targets) => targets,
        Err(error) => {
            tracing::warn!("cannot list network interfaces: {error}");
            return;
        }
    };
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|t| !config.loopback_only || t.address.is_loopback())
        .collect();
    // Every address a copy may leave from; a receiver with the key refuses the datagram
    // from any other (a relay).
    announcement.sender_addresses = targets
        .iter()
        .map(|t| std::net::IpAddr::V4(t.address))
        .take(super::announcement::MAX_SENDER_ADDRESSES)
        .collect();
    for target in targets {
        announcement.interface_priority = target.priority;
        // Every copy is fresh: a receiver refuses a nonce it has seen.
        announcement.sent_at_ms = now_ms();
        announcement.nonce = new_nonce();
        let bytes = announcement.encode_sealed(config.seal.as_deref());
        match socket
            .send_to(&bytes, (target.broadcast, config.port))
            .await
        {
            Ok(_) => stats.sent.fetch_add(1, Ordering::Relaxed),
            Err(error) => {
                tracing::debug!(
                    "announcing on {} ({}) failed: {error}",
                    target.interface,
                    target.broadcast
                );
                stats.send_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What the listening task needs to judge and record a datagram.
struct Receiver {
    self_id: String,
    stats: Arc<DatagramStats>,
    peers: Arc<PeerTable>,
    newcomer: Arc<Notify>,
    seal: Option<Arc<DatagramSeal>>,
    /// An open node not told `--insecure` hears only from loopback.
    loopback_only: bool,
}

async fn listen(socket: Arc<UdpSocket>, receiver: Receiver) {
    // One byte more than the limit, so that an oversized datagram shows as such.
    let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES + 1];
    loop {
        let (length, source) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!("discovery receive error: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        receiver.stats.received.fetch_add(1, Ordering::Relaxed);
        if receiver.handle(&buffer[..length], source) {
            receiver.newcomer.notify_one();
        }
        receiver.stats.handled();
    }
}

impl Receiver {
    /// Checks one datagram and tells the peer table what it says; anything else is
    /// counted and ignored. Returns whether it came from a node new to the table.
    fn handle(&self, bytes: &[u8], source: SocketAddr) -> bool {
        let stats = &self.stats;
        if self.loopback_only && !source.ip().is_loopback() {
            // An open node's peers are on this host: anyone else could join it without a
            // key. (The kernel drops packets from the network that claim a loopback source.)
            if stats.count_not_loopback(source.ip()) == 0 {
                tracing::warn!(
                    "refused a discovery datagram from {source}: an open node hears only from loopback (give every node --cluster-key, or --insecure)"
                );
            }
            return false;
        }
        let opened = Announcement::open(bytes, self.seal.as_deref(), now_ms(), source.ip());
        let announcement = match opened {
            Ok(announcement) => announcement,
            Err(error) => {
                if matches!(
                    error,
                    super::DatagramError::Refused(_) | super::DatagramError::WrongSender(_)
                ) {
                    tracing::debug!("refused a datagram from {source}: {error}");
                } else {
                    tracing::debug!("ignored a datagram from {source}: {error}");
                }
                stats.count_error(&error, source.ip());
                return false;
            }
        };
        if announcement.node_id == self.self_id {
            stats.own.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let peers = &self.peers;
        if announcement.departing {
            peers.forget(&announcement.node_id);
            return false;
        }
        let (node_id, draining) = (announcement.node_id.clone(), announcement.draining);
        let is_new = peers.observe(Sighting {
            node_id: announcement.node_id,
            address: SocketAddr::new(source.ip(), announcement.grpc_port).to_string(),
            priority: announcement.interface_priority,
            model_id: announcement.model_id,
            capabilities: Some(announcement.capabilities),
        });
        peers.set_draining(&node_id, draining);
        is_new
    }
}

impl Resource for UdpDiscovery {
    const KIND: &'static str = "udp_discovery";

    async fn initialize(&self) -> anyhow::Result<()> {
        let socket = Arc::new(Self::bind(self.config.port)?);
        let mut tasks = Vec::new();
        let newcomer = Arc::new(Notify::new());
        tasks.push(tokio::spawn(listen(
            socket.clone(),
            Receiver {
                self_id: self.self_id.clone(),
                stats: self.stats.clone(),
                peers: self.peers.clone(),
                newcomer: newcomer.clone(),
                seal: self.config.seal.clone(),
                loopback_only: self.config.loopback_only,
            },
        )));
        tasks.push(tokio::spawn({
            let (socket, config, stats, announce, newcomer) = (
                socket.clone(),
                self.config.clone(),
                self.stats.clone(),
                self.announce.clone(),
                newcomer.clone(),
            );
            async move {
                let mut ticker = tokio::time::interval(config.announce_interval);
                loop {
                    // On the tick, and at once when a new node shows up, so that it
                    // learns of this one without waiting for the next tick.
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = newcomer.notified() => {}
                    }
                    if let Some(announcement) = announce() {
                        announce_once(&socket, &config, &stats, announcement).await;
                    }
                }
            }
        }));
        tasks.push(tokio::spawn({
            let peers = self.peers.clone();
            async move {
                let mut ticker = tokio::time::interval(peers.config().health_interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    peers.maintain().await;
                }
            }
        }));
        tracing::info!("UDP discovery on port {}", self.config.port);
        *self.lock() = Some(Running { socket, tasks });
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let running = self.lock().take();
        if let Some(running) = running {
            for task in &running.tasks {
                task.abort();
            }
            for task in running.tasks {
                let _ = task.await;
            }
            // Say goodbye once nothing can announce this node again, so that peers drop
            // it now rather than after a timeout.
            if let Some(mut announcement) = (self.announce)() {
                announcement.departing = true;
                announce_once(&running.socket, &self.config, &self.stats, announcement).await;
            }
        }
        self.peers.clear().await;
        Ok(())
    }

    async fn health(&self) -> anyhow::Result<()> {
        match &*self.lock() {
            Some(running) if running.tasks.iter().all(|t| !t.is_finished()) => Ok(()),
            Some(_) => anyhow::bail!("a discovery task has stopped"),
            None => anyhow::bail!("discovery is not running"),
        }
    }

    fn info(&self) -> serde_json::Value {
        json!({
            "port": self.config.port,
            "announce_interval_ms": self.config.announce_interval.as_millis() as u64,
            "authenticated": self.config.seal.is_some(),
            "loopback_only": self.config.loopback_only,
            "remembered_nonces": self.config.seal.as_ref().map(|s| s.remembered()),
            "datagrams": self.stats.to_json(),
            "peers": self.peers.peers(),
            "max_peers": self.peers.config().max_peers,
            "refused_table_full": self.peers.refused_full(),
            "refused_off_loopback": self.peers.refused_off_loopback(),
        })
    }
}
