//! Per-request key/value caches, bounded by count and bytes.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::bail;

pub use super::model::SequenceCache;

/// Limits of a [`KvCacheStore`].
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub max_requests: usize,
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_requests: 64,
            max_bytes: 2 << 30,
        }
    }
}

struct Entry {
    cache: Option<SequenceCache>,
    last_used: Instant,
}

/// The caches of every request a shard is serving, keyed by request id.
///
/// Bounded by count and bytes: past either bound, the least recently used idle request
/// is evicted. A request whose cache was evicted gets a clear error on its next step
/// rather than silently starting over (its position no longer matches).
pub struct KvCacheStore {
    limits: CacheLimits,
    entries: HashMap<String, Entry>,
    evictions: u64,
}

impl KvCacheStore {
    pub fn new(limits: CacheLimits) -> Self {
        KvCacheStore {
            limits,
            entries: HashMap::new(),
            evictions: 0,
        }
    }

    /// Takes the cache of `request_id` out for a step at `position`: a new request starts
    /// at 0; a continuing one must find its cache at exactly that position.
    pub fn checkout(
        &mut self,
        request_id: &str,
        position: usize,
        new_cache: impl FnOnce() -> SequenceCache,
    ) -> anyhow::Result<SequenceCache> {
        match self.entries.get_mut(request_id) {
            Some(entry) => {
                let Some(cache) = entry.cache.take() else {
                    bail!("request {request_id} is already running a step on this shard");
                };
                if cache.len != position {
                    let len = cache.len;
                    entry.cache = Some(cache);
                    bail!(
                        "request {request_id} is at position {len} on this shard, not {position}"
                    );
                }
                entry.last_used = Instant::now();
                Ok(cache)
            }
            None if position == 0 => {
                self.entries.insert(
                    request_id.to_string(),
                    Entry {
                        cache: None,
                        last_used: Instant::now(),
                    },
                );
                Ok(new_cache())
            }
            None => bail!(
                "no KV cache for request {request_id} at position {position}: it was evicted \
                 or never started on this shard"
            ),
        }
    }

    /// Returns a cache after its step, then enforces the bounds.
    pub fn checkin(&mut self, request_id: &str, cache: SequenceCache) {
        if let Some(entry) = self.entries.get_mut(request_id) {
            entry.cache = Some(cache);
            entry.last_used = Instant::now();
        }
        self.enforce_limits(request_id);
    }

    /// Drops every cache whose key starts with `prefix`. Returns how many.
    pub fn remove_prefix(&mut self, prefix: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|key, _| !key.starts_with(prefix));
        before - self.entries.len()
    }

    /// Drops a request's cache (finished, cancelled or failed). Returns whether it existed.
    pub fn remove(&mut self, request_id: &str) -> bool {
        self.entries.remove(request_id).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops idle caches unused for longer than `max_idle`. Returns how many.
    pub fn expire_idle(&mut self, max_idle: std::time::Duration) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.cache.is_none() || e.last_used.elapsed() <= max_idle);
        before - self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.entries
            .values()
            .filter_map(|e| e.cache.as_ref())
            .map(|c| c.bytes)
            .sum()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.entries.contains_key(request_id)
    }

    /// Evicts least recently used idle caches (never `keep`, never one checked out)
    /// until both bounds hold.
    fn enforce_limits(&mut self, keep: &str) {
        while self.entries.len() > self.limits.max_requests || self.bytes() > self.limits.max_bytes
        {
            let victim = self
                .entries
                .iter()
                .filter(|(id, e)| id.as_str() != keep && e.cache.is_some())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| id.clone());
            match victim {
                Some(id) => {
                    tracing::info!("evicting the KV cache of request {id} to stay within limits");
                    self.entries.remove(&id);
                    self.evictions += 1;
                }
                None => break,
            }
        }
    }
}
