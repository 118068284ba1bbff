//! Per-request key/value caches, within a memory budget.
//!
//! A request that tells its size (prompt + the tokens it may generate) *reserves* that
//! much of the budget when it starts on a shard, and is refused when the budget cannot
//! hold it: an admitted request is never evicted midway. Requests that do not tell their
//! size (local generation, tests) reserve nothing and, past the bounds, the least recently
//! used of them is evicted; it then gets a clear error on its next step rather than
//! silently starting over.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::bail;

pub use crate::engine::model::sequence_cache::SequenceCache;

/// Where a request stands on a layer range of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePosition {
    /// No cache: the request has not started here (or was dropped).
    Absent,
    /// Its cache holds this many positions.
    At(usize),
    /// A step of it is running now.
    Busy,
}

/// Limits of a [`KvCacheStore`].
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub max_requests: usize,
    /// The KV cache budget, in bytes.
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_requests: 256,
            max_bytes: 2 << 30,
        }
    }
}

struct Entry {
    cache: Option<SequenceCache>,
    last_used: Instant,
    /// Bytes held for the request whatever its cache holds yet (0: not reserved).
    reserved: usize,
    /// The size of its cache when last checked in.
    bytes: usize,
}

impl Entry {
    /// What the entry counts against the budget.
    fn charge(&self) -> usize {
        self.reserved.max(self.bytes)
    }
}

/// The caches of every request a shard is serving, keyed by request id.
pub struct KvCacheStore {
    limits: CacheLimits,
    entries: HashMap<String, Entry>,
    evictions: u64,
    refusals: u64,
}

impl KvCacheStore {
    pub fn new(limits: CacheLimits) -> Self {
        KvCacheStore {
            limits,
            entries: HashMap::new(),
            evictions: 0,
            refusals: 0,
        }
    }

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// Takes the cache of `request_id` out for a step at `position`: a new request starts
    /// with the cache `new_cache` makes — empty, or its prefix restored from the prefix
    /// cache — which must end at `position` (reserving `reserve` bytes of the budget,
    /// refused when they are not free); a continuing one must find its cache at exactly
    /// that position.
    pub fn checkout(
        &mut self,
        request_id: &str,
        position: usize,
        reserve: usize,
        new_cache: impl FnOnce() -> anyhow::Result<SequenceCache>,
    ) -> anyhow::Result<SequenceCache> {
        if let Some(entry) = self.entries.get_mut(request_id) {
            let Some(cache) = entry.cache.take() else {
                bail!("request {request_id} is already running a step on this shard");
            };
            if cache.len != position {
                let len = cache.len;
                entry.cache = Some(cache);
                bail!("request {request_id} is at position {len} on this shard, not {position}");
            }
            entry.last_used = Instant::now();
            return Ok(cache);
        }
        if reserve > 0 {
            let committed = self.reserved();
            if committed + reserve > self.limits.max_bytes {
                self.refusals += 1;
                bail!(
                    "the KV cache budget is full: request {request_id} needs {:.1} MB, \
                     {:.1} MB of {:.1} MB are free",
                    reserve as f64 / 1e6,
                    self.limits.max_bytes.saturating_sub(committed) as f64 / 1e6,
                    self.limits.max_bytes as f64 / 1e6
                );
            }
        }
        let cache = new_cache()?;
        if cache.len != position {
            bail!(
                "no KV cache for request {request_id} at position {position}: it was evicted \
                 or never started on this shard"
            );
        }
        self.entries.insert(
            request_id.to_string(),
            Entry {
                cache: None,
                last_used: Instant::now(),
                reserved: reserve,
                bytes: cache.bytes,
            },
        );
        // Unreserved requests may have to make room.
        self.enforce_limits(request_id);
        Ok(cache)
    }

    /// Takes the caches of `request_id` out of the store for good (every layer range,
    /// keys `request_id@…`), leaving those a step holds now.
    pub fn take_prefix(&mut self, prefix: &str) -> Vec<(String, SequenceCache)> {
        let keys: Vec<String> = self
            .entries
            .keys()
            .filter(|key| key.starts_with(prefix))
            .cloned()
            .collect();
        let mut taken = Vec::new();
        for key in keys {
            if let Some(entry) = self.entries.remove(&key)
                && let Some(cache) = entry.cache
            {
                taken.push((key, cache));
            }
        }
        taken
    }

    /// Returns a cache after its step, then enforces the bounds.
    pub fn checkin(&mut self, request_id: &str, cache: SequenceCache) {
        if let Some(entry) = self.entries.get_mut(request_id) {
            entry.bytes = cache.bytes;
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

    /// Bytes the caches hold now.
    pub fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.bytes).sum()
    }

    /// Bytes counted against the budget (reservations, or what is held beyond them).
    pub fn reserved(&self) -> usize {
        self.entries.values().map(Entry::charge).sum()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Requests refused because the budget could not hold them.
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.entries.contains_key(request_id)
    }

    /// Where a request stands: no cache, its cache's length, or a step running.
    pub fn position(&self, request_id: &str) -> CachePosition {
        match self.entries.get(request_id) {
            None => CachePosition::Absent,
            Some(Entry { cache: Some(c), .. }) => CachePosition::At(c.len),
            Some(_) => CachePosition::Busy,
        }
    }

    /// Evicts least recently used idle caches that reserved nothing (never `keep`, never
    /// one checked out) until both bounds hold.
    fn enforce_limits(&mut self, keep: &str) {
        while self.entries.len() > self.limits.max_requests
            || self.reserved() > self.limits.max_bytes
        {
            let victim = self
                .entries
                .iter()
                .filter(|(id, e)| id.as_str() != keep && e.cache.is_some() && e.reserved == 0)
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
