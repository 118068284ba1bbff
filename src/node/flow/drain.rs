//! Leaving without costing anyone an answer (DESIGN.md §4d).
//!
//! A node asked to stop (SIGTERM, or `POST /v1/admin/drain`) first *drains*: it says so
//! in its announcements, so its peers leave it out of new plans and the origins of
//! requests running through it plan them again over the others (a draining member counts
//! as lost, see `continuation`); it refuses steps of requests it has not seen before and
//! takes no new requests of its own; and it waits, bounded, until nothing holds it —
//! no request it originated is running, no step is queued here and no other origin's
//! request keeps a cache here (an origin moving its request off tells this node to drop
//! the old epoch). Then the node stops as it always did.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::RequestFlow;

/// What still holds a draining node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DrainStatus {
    pub draining: bool,
    /// Requests this node originated that are still running.
    pub own_requests: usize,
    /// Steps queued on this node's engine.
    pub queued_steps: usize,
    /// Requests holding a KV cache here (its own and other origins').
    pub cached_requests: usize,
}

impl DrainStatus {
    /// Nothing holds the node any more.
    pub fn is_idle(&self) -> bool {
        self.own_requests == 0 && self.queued_steps == 0 && self.cached_requests == 0
    }
}

/// A generation this node originated, counted from `generate` until its outcome is known
/// (re-plans included: between two epochs no epoch waits for a result, and a drain must
/// not take that for idle). Dropping it (also by a panic) uncounts it.
pub(super) struct LiveGeneration(Arc<AtomicUsize>);

impl LiveGeneration {
    pub(super) fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        LiveGeneration(count.clone())
    }
}

impl Drop for LiveGeneration {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RequestFlow {
    /// The flag the node's announcements read.
    pub fn draining_flag(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining (once; later calls change nothing). Whoever waits on
    /// [`RequestFlow::drain_requested`] hears of it.
    pub fn start_draining(&self) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "node {} is draining: no new plans here; requests move off it",
                self.node_id
            );
            self.drain_requested.notify_waiters();
            self.drain_requested.notify_one();
        }
    }

    /// Resolves once a drain has been asked for (by the API; a signal is handled by the
    /// node's main loop itself).
    pub async fn drain_requested(&self) {
        if self.is_draining() {
            return;
        }
        self.drain_requested.notified().await;
    }

    /// What holds this node now.
    pub async fn drain_status(&self) -> DrainStatus {
        let cached_requests = if self.engine.state().is_usable() {
            self.model()
                .await
                .map_or(0, |model| model.active_requests())
        } else {
            0
        };
        DrainStatus {
            draining: self.is_draining(),
            own_requests: self.active_requests(),
            queued_steps: self.shard.queued_steps(),
            cached_requests,
        }
    }

    /// Drains: starts draining and waits until nothing holds the node, or `bound` has
    /// passed. Returns what still held it at the end (idle when it drained in time).
    pub async fn drain(&self, bound: Duration) -> DrainStatus {
        self.start_draining();
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        loop {
            ticker.tick().await;
            let status = self.drain_status().await;
            if status.is_idle() {
                tracing::info!(
                    "node {} drained in {:.2} s",
                    self.node_id,
                    started.elapsed().as_secs_f64()
                );
                return status;
            }
            if started.elapsed() >= bound {
                tracing::warn!(
                    "node {} still holds work after {bound:?} of draining ({} own request(s), {} queued step(s), {} cached request(s)): stopping anyway",
                    self.node_id,
                    status.own_requests,
                    status.queued_steps,
                    status.cached_requests
                );
                return status;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU16;

    use super::*;
    use crate::catalog::{ModelFormat, ResolvedModel};
    use crate::discovery::{PeerTable, PeerTableConfig};
    use crate::engine::{DeviceChoice, EngineConfig, InferenceEngine, SamplingParams};
    use crate::node::{FlowConfig, GenerateRequest};
    use crate::resource::{Managed, ResourceRegistry};

    /// A request of this node's own holds a drain for as long as it runs, also while no
    /// epoch of it waits for a result (before its first plan, or between two epochs).
    #[tokio::test]
    async fn a_request_of_its_own_holds_a_drain_while_it_holds_no_epoch() {
        // An engine that cannot open: the request fails before any epoch is planned.
        let engine = Managed::new(
            "engine",
            InferenceEngine::new(EngineConfig::new(
                ResolvedModel {
                    id: "absent".into(),
                    path: "/nonexistent/absent.gguf".into(),
                    format: ModelFormat::Gguf,
                },
                DeviceChoice::Cpu,
            )),
        );
        let peers = PeerTable::new("a", PeerTableConfig::default(), ResourceRegistry::new());
        let flow = RequestFlow::new(
            "a",
            "absent",
            Arc::new(AtomicU16::new(0)),
            Default::default(),
            engine,
            peers,
            FlowConfig::default(),
        );
        let mut events = flow.generate(GenerateRequest::new(
            vec![1, 2, 3],
            4,
            SamplingParams::default(),
        ));
        assert_eq!(
            flow.drain_status().await.own_requests,
            1,
            "a drain would stop the node under a request of its own"
        );
        while events.recv().await.is_some() {}
        let released = tokio::time::timeout(Duration::from_secs(2), async {
            while flow.drain_status().await.own_requests > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            released.is_ok(),
            "the request ended but still holds the node"
        );
    }
}
