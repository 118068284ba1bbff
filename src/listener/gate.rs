//! How many connections a server holds: at most `max_connections` at once, and at most
//! `max_per_ip` from one address, so that one host opening silent connections by the
//! thousand neither takes every file descriptor nor shuts the others out. Every
//! admission, refusal and forced close is counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// The caps and deadlines of a server's connections (flags of `exo node`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections one server holds at once; past it new ones are closed at once.
    pub max_connections: usize,
    /// Connections from one IP address at once.
    pub max_per_ip: usize,
    /// How long a connection may stay silent where it must speak: a new connection before
    /// its request headers (HTTP) or its TLS handshake or first bytes (gRPC), and an idle
    /// keep-alive connection before its next request.
    pub silent_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_per_ip: 256,
            silent_timeout: Duration::from_secs(10),
        }
    }
}

/// What a gate has seen, for reports and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionStats {
    /// Held now.
    pub open: usize,
    pub accepted: u64,
    /// Closed at once: the server held `max_connections`.
    pub refused_server_cap: u64,
    /// Closed at once: their address held `max_per_ip`.
    pub refused_ip_cap: u64,
    /// Closed for staying silent past `silent_timeout`.
    pub timed_out: u64,
    /// TLS handshakes that failed (no certificate of the cluster, not TLS at all...).
    pub tls_failed: u64,
    /// TLS handshakes not finished within `silent_timeout`.
    pub tls_timed_out: u64,
    /// Errors of `accept` itself (out of file descriptors, above all).
    pub accept_errors: u64,
}

/// The connection caps and counts of one server.
#[derive(Debug)]
pub struct ConnectionGate {
    server: &'static str,
    limits: ConnectionLimits,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    open: AtomicUsize,
    accepted: AtomicU64,
    refused_server_cap: AtomicU64,
    refused_ip_cap: AtomicU64,
    timed_out: AtomicU64,
    tls_failed: AtomicU64,
    tls_timed_out: AtomicU64,
    accept_errors: AtomicU64,
}

/// One admitted connection: its place is given back when this is dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.release(self.ip);
    }
}

impl Admission {
    pub fn gate(&self) -> &Arc<ConnectionGate> {
        &self.gate
    }
}

impl ConnectionGate {
    /// `server` names it in logs and metrics ("api", "grpc").
    pub fn new(server: &'static str, limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(ConnectionGate {
            server,
            limits,
            per_ip: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused_server_cap: AtomicU64::new(0),
            refused_ip_cap: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            tls_failed: AtomicU64::new(0),
            tls_timed_out: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        })
    }

    pub fn server(&self) -> &'static str {
        self.server
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Takes a place for a connection from `ip`, or refuses it (and counts why).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admission> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.limits.max_connections {
            let refused = self.refused_server_cap.fetch_add(1, Ordering::Relaxed);
            if refused == 0 {
                tracing::warn!(
                    "{} server holds {} connections, its most (--max-connections): refusing new ones",
                    self.server,
                    self.limits.max_connections
                );
            }
            return None;
        }
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.limits.max_per_ip {
            let refused = self.refused_ip_cap.fetch_add(1, Ordering::Relaxed);
            if refused == 0 {
                tracing::warn!(
                    "{} server holds {} connections from {ip}, the most from one address (--max-connections-per-ip): refusing more",
                    self.server,
                    self.limits.max_per_ip
                );
            }
            return None;
        }
        *from_ip += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Admission {
            gate: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection was closed for staying silent.
    pub fn count_timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake failed (`timed_out`: it did not finish in time).
    pub fn count_tls_failure(&self, timed_out: bool) {
        let counter = if timed_out {
            &self.tls_timed_out
        } else {
            &self.tls_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `accept` itself failed; returns how many times so far.
    pub fn count_accept_error(&self) -> u64 {
        self.accept_errors.fetch_add(1, Ordering::Relaxed)
    }

    pub fn stats(&self) -> ConnectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionStats {
            open: self.open.load(Ordering::Relaxed),
            accepted: get(&self.accepted),
            refused_server_cap: get(&self.refused_server_cap),
            refused_ip_cap: get(&self.refused_ip_cap),
            timed_out: get(&self.timed_out),
            tls_failed: get(&self.tls_failed),
            tls_timed_out: get(&self.tls_timed_out),
            accept_errors: get(&self.accept_errors),
        }
    }

    /// Caps and counts, for the resource report.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "max_connections": self.limits.max_connections,
            "max_connections_per_ip": self.limits.max_per_ip,
            "silent_timeout_ms": self.limits.silent_timeout.as_millis() as u64,
            "addresses": self.per_ip.lock().unwrap_or_else(|p| p.into_inner()).len(),
            "counts": self.stats(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_per_server_and_places_come_back() {
        let gate = ConnectionGate::new(
            "test",
            ConnectionLimits {
                max_connections: 3,
                max_per_ip: 2,
                ..ConnectionLimits::default()
            },
        );
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "a third from one address");
        let _third = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "a fourth for the server");
        drop(first);
        assert!(gate.admit(a).is_some(), "a place given back is taken again");
        let stats = gate.stats();
        assert_eq!(
            (
                stats.accepted,
                stats.refused_ip_cap,
                stats.refused_server_cap
            ),
            (4, 1, 1)
        );
    }
}
