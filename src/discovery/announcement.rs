//! The discovery datagram: what a node says about itself, and how a receiver checks it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::topology::DeviceCapabilities;
use crate::trust::{DatagramSeal, SealError};

/// Identifies exo-rs datagrams among whatever else shares the port.
pub const PROTOCOL: &str = "exo-rs";
/// Bumped when the announcement changes incompatibly; other versions are ignored.
pub const PROTOCOL_VERSION: u32 = 1;
/// Larger datagrams are ignored unread (a real announcement is a few hundred bytes).
pub const MAX_DATAGRAM_BYTES: usize = 8 * 1024;
/// At most this many sender addresses in one announcement.
pub const MAX_SENDER_ADDRESSES: usize = 64;
/// Refused datagrams are counted per source address for this many sources (the rest
/// together), so that an operator sees who talks to the port without the key.
const MAX_REFUSED_SOURCES: usize = 64;

/// One node's announcement, sent on every suitable interface every announce interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub protocol: String,
    pub version: u32,
    pub node_id: String,
    pub grpc_port: u16,
    /// The model the node serves.
    pub model_id: String,
    /// How the sender ranks the interface this copy went out on (higher is better:
    /// physical links above container bridges above loopback).
    pub interface_priority: u8,
    pub capabilities: DeviceCapabilities,
    /// Sent once on the way out, so that peers drop the node at once.
    #[serde(default)]
    pub departing: bool,
    /// The node is draining: it finishes what it holds and takes no new plans (it
    /// announces this until it leaves, so its own requests' steps are still taken).
    #[serde(default)]
    pub draining: bool,
    /// The sender's clock (ms since the Unix epoch) and a random nonce: with a cluster key
    /// they are under the datagram's MAC, so that stale copies and replays are refused.
    #[serde(default)]
    pub sent_at_ms: u64,
    #[serde(default)]
    pub nonce: String,
    /// The addresses the sender announces from (its interfaces'). With a cluster key
    /// they are under the MAC, and a datagram arriving from any other address is refused:
    /// a host that relays a member's datagram cannot move the member to its own address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sender_addresses: Vec<IpAddr>,
}

/// Why a datagram was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram of {0} bytes is larger than {MAX_DATAGRAM_BYTES}")]
    TooLarge(usize),
    #[error("not an announcement: {0}")]
    Malformed(String),
    #[error("a datagram of another protocol ({0:?})")]
    Foreign(String),
    #[error("protocol version {0}, expected {PROTOCOL_VERSION}")]
    WrongVersion(u32),
    #[error("invalid announcement: {0}")]
    Invalid(&'static str),
    /// Refused by the cluster key: no valid MAC, stale, or replayed.
    #[error("refused: {0}")]
    Refused(SealError),
    /// Sealed, but sent from an address its body does not name: relayed by another host.
    #[error("refused: sent from {0}, an address the sealed announcement does not name")]
    WrongSender(IpAddr),
}

impl Announcement {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Seals the encoded announcement with the cluster key, or leaves it open without one.
    pub fn encode_sealed(&self, seal: Option<&DatagramSeal>) -> Vec<u8> {
        match seal {
            Some(seal) => seal.seal(&self.encode()),
            None => self.encode(),
        }
    }

    /// Opens a datagram that arrived from `source`: with a cluster key, it must carry a
    /// valid MAC, name `source` among its sender addresses, be fresh and not a replay (the
    /// nonce is remembered only once all else holds, so a relayed copy arriving first
    /// cannot spend the genuine copy's nonce); then it is decoded and checked as
    /// [`decode`](Self::decode) does. Never panics.
    pub fn open(
        bytes: &[u8],
        seal: Option<&DatagramSeal>,
        now_ms: u64,
        source: IpAddr,
    ) -> Result<Self, DatagramError> {
        let Some(seal) = seal else {
            return Self::decode(bytes);
        };
        if bytes.len() > MAX_DATAGRAM_BYTES {
            return Err(DatagramError::TooLarge(bytes.len()));
        }
        let body = seal.open(bytes).map_err(DatagramError::Refused)?;
        let announcement = Self::decode(body)?;
        if !announcement.sender_addresses.contains(&source) {
            return Err(DatagramError::WrongSender(source));
        }
        seal.check_fresh(announcement.sent_at_ms, &announcement.nonce, now_ms)
            .map_err(DatagramError::Refused)?;
        Ok(announcement)
    }

    /// Decodes and checks a datagram. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DatagramError> {
        if bytes.len() > MAX_DATAGRAM_BYTES {
            return Err(DatagramError::TooLarge(bytes.len()));
        }
        // Look at the protocol and version first, so that a foreign or newer datagram is
        // counted as such rather than as malformed.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| DatagramError::Malformed(e.to_string()))?;
        match value.get("protocol").and_then(|p| p.as_str()) {
            Some(PROTOCOL) => {}
            other => return Err(DatagramError::Foreign(other.unwrap_or("none").to_string())),
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
            Some(v) => {
                return Err(DatagramError::WrongVersion(
                    v.min(u64::from(u32::MAX)) as u32
                ));
            }
            None => return Err(DatagramError::Malformed("no version".into())),
        }
        let announcement: Announcement =
            serde_json::from_value(value).map_err(|e| DatagramError::Malformed(e.to_string()))?;
        if announcement.node_id.is_empty() || announcement.node_id.len() > 128 {
            return Err(DatagramError::Invalid(
                "node id must have 1 to 128 characters",
            ));
        }
        if announcement
            .node_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(DatagramError::Invalid(
                "node id has whitespace or control characters",
            ));
        }
        if announcement.grpc_port == 0 {
            return Err(DatagramError::Invalid("gRPC port 0"));
        }
        if announcement.sender_addresses.len() > MAX_SENDER_ADDRESSES {
            return Err(DatagramError::Invalid("more than 64 sender addresses"));
        }
        Ok(announcement)
    }
}

/// Counts of what discovery received, by outcome.
#[derive(Debug)]
pub struct DatagramStats {
    /// Datagrams fully handled so far, as a watch: wait on it instead of polling.
    handled: tokio::sync::watch::Sender<u64>,
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub own: AtomicU64,
    pub too_large: AtomicU64,
    pub malformed: AtomicU64,
    pub foreign: AtomicU64,
    pub wrong_version: AtomicU64,
    pub invalid: AtomicU64,
    /// Refused by the cluster key, by reason.
    pub unauthenticated: AtomicU64,
    pub stale: AtomicU64,
    pub replayed: AtomicU64,
    /// Refused by an open node that hears only from loopback: sent from elsewhere.
    pub not_loopback: AtomicU64,
    /// Sealed, but relayed from an address the sender does not name.
    pub wrong_sender: AtomicU64,
    /// Refused datagrams by source address (bounded; see `MAX_REFUSED_SOURCES`).
    refused_from: Mutex<BTreeMap<String, u64>>,
    pub sent: AtomicU64,
    pub send_errors: AtomicU64,
}

impl Default for DatagramStats {
    fn default() -> Self {
        DatagramStats {
            handled: tokio::sync::watch::channel(0).0,
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            own: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            wrong_version: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            unauthenticated: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            not_loopback: AtomicU64::new(0),
            wrong_sender: AtomicU64::new(0),
            refused_from: Mutex::new(BTreeMap::new()),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        }
    }
}

impl DatagramStats {
    /// Marks one datagram as handled (after its outcome was counted).
    pub fn handled(&self) {
        self.handled.send_modify(|n| *n += 1);
    }

    /// The number of datagrams handled, on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.handled.subscribe()
    }

    /// Counts a datagram from `source` that was not taken, by why.
    pub fn count_error(&self, error: &DatagramError, source: IpAddr) {
        if matches!(
            error,
            DatagramError::Refused(_) | DatagramError::WrongSender(_)
        ) {
            self.count_refused_source(source);
        }
        let counter = match error {
            DatagramError::TooLarge(_) => &self.too_large,
            DatagramError::Malformed(_) => &self.malformed,
            DatagramError::Foreign(_) => &self.foreign,
            DatagramError::WrongVersion(_) => &self.wrong_version,
            DatagramError::Invalid(_) => &self.invalid,
            DatagramError::Refused(SealError::Unauthenticated) => &self.unauthenticated,
            DatagramError::Refused(SealError::Stale(_)) => &self.stale,
            DatagramError::Refused(SealError::Replayed | SealError::BadNonce) => &self.replayed,
            DatagramError::WrongSender(_) => &self.wrong_sender,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a datagram an open node refused for not coming from loopback.
    pub fn count_not_loopback(&self, source: IpAddr) -> u64 {
        self.count_refused_source(source);
        self.not_loopback.fetch_add(1, Ordering::Relaxed)
    }

    fn count_refused_source(&self, source: IpAddr) {
        let mut sources = self.refused_from.lock().unwrap_or_else(|p| p.into_inner());
        let key = source.to_string();
        let key = if sources.contains_key(&key) || sources.len() < MAX_REFUSED_SOURCES {
            key
        } else {
            "others".to_string()
        };
        *sources.entry(key).or_insert(0) += 1;
    }

    /// Refused datagrams from `source` so far.
    pub fn refused_from(&self, source: IpAddr) -> u64 {
        let sources = self.refused_from.lock().unwrap_or_else(|p| p.into_inner());
        sources.get(&source.to_string()).copied().unwrap_or(0)
    }

    /// Datagrams refused: by the cluster key (no valid MAC, stale, replayed), or by an
    /// open node for not coming from loopback.
    pub fn refused(&self) -> u64 {
        [
            &self.unauthenticated,
            &self.stale,
            &self.replayed,
            &self.not_loopback,
            &self.wrong_sender,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// Datagrams ignored for any reason but being our own.
    pub fn ignored(&self) -> u64 {
        let unread = [
            &self.too_large,
            &self.malformed,
            &self.foreign,
            &self.wrong_version,
            &self.invalid,
        ];
        unread
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.refused()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "received": get(&self.received),
            "accepted": get(&self.accepted),
            "own": get(&self.own),
            "ignored": {
                "too_large": get(&self.too_large),
                "malformed": get(&self.malformed),
                "foreign": get(&self.foreign),
                "wrong_version": get(&self.wrong_version),
                "invalid": get(&self.invalid),
            },
            "refused": {
                "unauthenticated": get(&self.unauthenticated),
                "stale": get(&self.stale),
                "replayed": get(&self.replayed),
                "not_loopback": get(&self.not_loopback),
                "wrong_sender": get(&self.wrong_sender),
            },
            "refused_from": *self.refused_from.lock().unwrap_or_else(|p| p.into_inner()),
            "sent": get(&self.sent),
            "send_errors": get(&self.send_errors),
        })
    }
}
