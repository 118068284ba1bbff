//! What a node measures of its link to one peer: the round-trip time of its health checks
//! (every 500 ms), the calls that failed, and the bytes of the messages that went each way.
//! Read by `/metrics` and shown on the web UI's ring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

/// Counters of one peer link (the handle keeps them across reconnects).
#[derive(Debug)]
pub struct LinkStats {
    /// The latest health check's round trip, in microseconds (0: none yet).
    last_rtt_micros: AtomicU64,
    /// Calls to the peer that failed (a refusal inside a reply is not counted: the hop
    /// worked).
    pub errors: AtomicU64,
    /// Encoded bytes of the messages sent to the peer and of its replies.
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
}

impl Default for LinkStats {
    fn default() -> Self {
        LinkStats {
            last_rtt_micros: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
        }
    }
}

impl LinkStats {
    pub fn round_trip(&self, rtt: Duration) {
        self.last_rtt_micros
            .store((rtt.as_micros() as u64).max(1), Ordering::Relaxed);
    }

    /// The latest round trip, if any.
    pub fn last_rtt(&self) -> Option<Duration> {
        match self.last_rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "rtt_ms": self.last_rtt().map(|d| d.as_secs_f64() * 1e3),
            "errors": self.errors.load(Ordering::Relaxed),
            "bytes_sent": self.bytes_sent.load(Ordering::Relaxed),
            "bytes_received": self.bytes_received.load(Ordering::Relaxed),
        })
    }
}
