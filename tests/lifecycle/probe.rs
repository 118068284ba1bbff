//! A resource whose behaviour each test dials in, and which counts what was done to it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use exo::resource::{Managed, Resource, ResourceConfig, ResourceRegistry, RetryPolicy};
use tokio::sync::{Barrier, Semaphore};

/// An error that `Probe` calls transient.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped (transient)")]
pub struct Dropped;

/// The dials and counters of a probe, shared with the test that holds it (the test
/// cannot reach the probe itself without going through `ensure_ready`, which would change
/// the state under test).
#[derive(Default)]
pub struct Knobs {
    pub init_calls: AtomicU32,
    pub cleanup_calls: AtomicU32,
    pub health_calls: AtomicU32,
    pub reconnect_calls: AtomicU32,
    /// The probe holds what a successful initialize acquired and no cleanup has released.
    pub live: AtomicBool,
    /// Initialize futures alive right now (a dropped future counts itself out).
    pub inits_in_flight: Arc<AtomicU32>,
    pub fail_init: AtomicBool,
    pub fail_cleanup: AtomicBool,
    pub unhealthy: AtomicBool,
    pub reconnect_fails: AtomicBool,
}

#[derive(Default)]
pub struct Probe {
    pub knobs: Arc<Knobs>,
    /// Network-like: reconnect exists and, unless `reconnect_fails`, succeeds and heals.
    pub network: bool,
    /// When set, initialize waits for a permit (to hold an attempt in flight).
    pub gate: Option<Arc<Semaphore>>,
    /// When set, cleanup waits for a permit (to hold the resource in Closing).
    pub cleanup_gate: Option<Arc<Semaphore>>,
    /// When set, health waits until the gate has a permit (to hold a check in flight).
    /// The permit is given back: one permit opens the gate for every later check.
    pub health_gate: Option<Arc<Semaphore>>,
    /// When set, reconnect waits until the gate has a permit, which it gives back.
    pub reconnect_gate: Option<Arc<Semaphore>>,
    /// When set, initialize waits at this barrier (to prove concurrency).
    pub barrier: Option<Arc<Barrier>>,
    /// When set, initialize and cleanup append "init NAME" / "cleanup NAME".
    pub log: Option<(String, Arc<Mutex<Vec<String>>>)>,
}

struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Probe {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn network() -> Self {
        Probe {
            network: true,
            ..Self::default()
        }
    }

    pub fn gated(gate: Arc<Semaphore>) -> Self {
        Probe {
            gate: Some(gate),
            ..Self::default()
        }
    }

    pub fn logged(name: &str, log: &Arc<Mutex<Vec<String>>>) -> Self {
        Probe {
            log: Some((name.to_string(), log.clone())),
            ..Self::default()
        }
    }

    pub fn knobs(&self) -> Arc<Knobs> {
        self.knobs.clone()
    }

    fn note(&self, what: &str) {
        if let Some((name, log)) = &self.log {
            log.lock().unwrap().push(format!("{what} {name}"));
        }
    }
}

impl Resource for Probe {
    const KIND: &'static str = "probe";

    async fn initialize(&self) -> anyhow::Result<()> {
        self.knobs.init_calls.fetch_add(1, SeqCst);
        self.knobs.inits_in_flight.fetch_add(1, SeqCst);
        let _in_flight = InFlight(self.knobs.inits_in_flight.clone());
        if let Some(gate) = &self.gate {
            gate.acquire().await?.forget();
        }
        if let Some(barrier) = &self.barrier {
            barrier.wait().await;
        }
        // Yield once so that concurrent callers really overlap with the attempt.
        tokio::task::yield_now().await;
        if self.knobs.fail_init.load(SeqCst) {
            anyhow::bail!("the probe was told to fail");
        }
        self.note("init");
        self.knobs.live.store(true, SeqCst);
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.knobs.cleanup_calls.fetch_add(1, SeqCst);
        if let Some(gate) = &self.cleanup_gate {
            gate.acquire().await?.forget();
        }
        self.knobs.live.store(false, SeqCst);
        self.note("cleanup");
        if self.knobs.fail_cleanup.load(SeqCst) {
            anyhow::bail!("the probe's cleanup was told to fail");
        }
        Ok(())
    }

    async fn health(&self) -> anyhow::Result<()> {
        self.knobs.health_calls.fetch_add(1, SeqCst);
        // Like a health RPC on a channel that a cleanup closes: a check of an instance
        // that is torn down while the check runs fails.
        let instance = self.knobs.cleanup_calls.load(SeqCst);
        if let Some(gate) = &self.health_gate {
            drop(gate.acquire().await?);
        }
        if self.knobs.cleanup_calls.load(SeqCst) != instance {
            anyhow::bail!("the instance under check was torn down");
        }
        if self.knobs.unhealthy.load(SeqCst) {
            anyhow::bail!("the probe is unhealthy");
        }
        Ok(())
    }

    async fn reconnect(&self) -> Option<anyhow::Result<()>> {
        if !self.network {
            return None;
        }
        self.knobs.reconnect_calls.fetch_add(1, SeqCst);
        if let Some(gate) = &self.reconnect_gate
            && let Err(closed) = gate.acquire().await
        {
            return Some(Err(closed.into()));
        }
        if self.knobs.reconnect_fails.load(SeqCst) {
            return Some(Err(anyhow::anyhow!("peer still unreachable")));
        }
        self.knobs.unhealthy.store(false, SeqCst);
        Some(Ok(()))
    }

    fn is_transient(&self, error: &anyhow::Error) -> bool {
        error.downcast_ref::<Dropped>().is_some()
    }
}

/// Short timeouts, so that tests about timeouts do not take long.
pub fn quick_config() -> ResourceConfig {
    ResourceConfig {
        initialize_timeout: Duration::from_secs(10),
        health_failure_threshold: 3,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            ..RetryPolicy::default()
        },
        ..ResourceConfig::default()
    }
}

pub fn managed(id: &str, probe: Probe) -> Arc<Managed<Probe>> {
    Managed::builder(id, probe).config(quick_config()).build()
}

pub fn registered(id: &str, probe: Probe, registry: &Arc<ResourceRegistry>) -> Arc<Managed<Probe>> {
    Managed::builder(id, probe)
        .config(quick_config())
        .register_in(registry)
        .build()
}

/// How long a test waits for a state before it fails (never a sleep: a bound).
pub const WAIT: Duration = Duration::from_secs(10);

/// A managed probe and the handle on its dials.
pub fn probe(id: &str, probe: Probe) -> (Arc<Managed<Probe>>, Arc<Knobs>) {
    let knobs = probe.knobs();
    (managed(id, probe), knobs)
}

/// Fails `r`'s health checks until it is in Error (its threshold in a row).
pub async fn fail_health_to_error(r: &Managed<Probe>, knobs: &Knobs) {
    knobs
        .unhealthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..r.config().health_failure_threshold {
        r.check_health().await;
    }
    assert_eq!(r.state(), exo::resource::ResourceState::Error);
}
