//! Authenticated discovery datagrams: `body || HMAC-SHA256(key, body)`.
//!
//! The MAC covers the whole body, including the sender's clock (`sent_at_ms`) and a random
//! nonce, so a datagram cannot be altered, and a copy recorded off the wire is refused:
//! after `max_age` as stale, before that as a replay (every nonce seen within the window
//! is remembered). Only datagrams with a valid MAC reach the replay memory, so a host
//! without the key cannot fill it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ClusterKey;

/// Bytes of the MAC at the end of a sealed datagram.
pub const TAG_BYTES: usize = 32;
/// How far a datagram's clock may be from ours (either way) before it counts as stale:
/// room for hosts whose clocks differ a little, short enough to bound the replay memory.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30);
/// At most this many nonces are remembered; past it, new datagrams are refused until the
/// window moves on (a flood of valid datagrams can only come from a key holder).
pub const MAX_REMEMBERED_NONCES: usize = 100_000;

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no valid cluster-key MAC")]
    Unauthenticated,
    #[error("sent {0} ms from our clock, more than the allowed window")]
    Stale(i64),
    #[error("a replay of a datagram already received")]
    Replayed,
    #[error("the nonce is missing or malformed")]
    BadNonce,
}

type HmacSha256 = Hmac<Sha256>;

/// Seals and opens discovery datagrams with a cluster key.
pub struct DatagramSeal {
    mac_key: [u8; 32],
    max_age: Duration,
    /// nonce → when it may be forgotten (ms since the epoch).
    seen: Mutex<HashMap<String, u64>>,
}

impl DatagramSeal {
    pub fn new(key: &ClusterKey) -> Self {
        Self::with_max_age(key, DEFAULT_MAX_AGE)
    }

    pub fn with_max_age(key: &ClusterKey, max_age: Duration) -> Self {
        DatagramSeal {
            mac_key: key.derive("discovery datagram mac"),
            max_age,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length: cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.mac_key).expect("HMAC accepts any key length")
    }

    /// `body` followed by its MAC.
    pub fn seal(&self, body: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(body);
        let mut sealed = body.to_vec();
        sealed.extend_from_slice(&mac.finalize().into_bytes());
        sealed
    }

    /// The body of a sealed datagram whose MAC is valid (checked in constant time).
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], SealError> {
        if datagram.len() < TAG_BYTES {
            return Err(SealError::Unauthenticated);
        }
        let (body, tag) = datagram.split_at(datagram.len() - TAG_BYTES);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag)
            .map_err(|_| SealError::Unauthenticated)?;
        Ok(body)
    }

    /// Checks an authenticated datagram's clock and nonce, and remembers the nonce. Call
    /// only after [`open`](Self::open) succeeded.
    pub fn check_fresh(&self, sent_at_ms: u64, nonce: &str, now_ms: u64) -> Result<(), SealError> {
        let skew = now_ms as i128 - sent_at_ms as i128;
        let max_age = self.max_age.as_millis() as i128;
        if skew.abs() > max_age {
            return Err(SealError::Stale(
                skew.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            ));
        }
        if nonce.len() < 16 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SealError::BadNonce);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED_NONCES / 2 {
            seen.retain(|_, forget_at| *forget_at > now_ms);
        }
        if seen.contains_key(nonce) {
            return Err(SealError::Replayed);
        }
        if seen.len() >= MAX_REMEMBERED_NONCES {
            return Err(SealError::Replayed);
        }
        // Remembered until the datagram would be stale anyway, plus its possible skew.
        seen.insert(
            nonce.to_string(),
            sent_at_ms.saturating_add(2 * max_age as u64),
        );
        Ok(())
    }

    /// Nonces remembered now (for the resource report).
    pub fn remembered(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

impl std::fmt::Debug for DatagramSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatagramSeal(max_age {:?})", self.max_age)
    }
}

/// Milliseconds since the Unix epoch, by this host's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh random nonce for a datagram.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    super::key::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> DatagramSeal {
        DatagramSeal::new(&ClusterKey::from_bytes([1; 32]))
    }

    #[test]
    fn a_sealed_body_opens_and_any_change_is_refused() {
        let seal = seal();
        let sealed = seal.seal(b"hello");
        assert_eq!(seal.open(&sealed).unwrap(), b"hello");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(seal.open(&bad), Err(SealError::Unauthenticated), "byte {i}");
        }
        assert_eq!(seal.open(b"short"), Err(SealError::Unauthenticated));
        let other = DatagramSeal::new(&ClusterKey::from_bytes([2; 32]));
        assert_eq!(other.open(&sealed), Err(SealError::Unauthenticated));
    }

    #[test]
    fn stale_and_replayed_datagrams_are_refused() {
        let seal = seal();
        let nonce = new_nonce();
        let now = 1_000_000_000;
        assert_eq!(seal.check_fresh(now, &nonce, now), Ok(()));
        assert_eq!(
            seal.check_fresh(now, &nonce, now + 5),
            Err(SealError::Replayed)
        );
        assert!(matches!(
            seal.check_fresh(now - 31_000, &new_nonce(), now),
            Err(SealError::Stale(_))
        ));
        assert!(matches!(
            seal.check_fresh(now + 31_000, &new_nonce(), now),
            Err(SealError::Stale(_))
        ));
        assert_eq!(seal.check_fresh(now, "xyz", now), Err(SealError::BadNonce));
    }
}
