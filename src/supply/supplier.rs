//! A node's weight supply: makes sure the tensors of the layers the node is planned for
//! are on its disk before its engine loads them — from a peer that holds them first (a
//! LAN transfer), else from the Hub (only those layers' bytes) — and serves what it holds
//! to its peers.
//!
//! One transfer at a time per node (a second request for the same range waits for the
//! first and finds the bytes there). Ranges known to be here are remembered, so the
//! steps of a loaded shard never touch the disk or the network.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::json;
use tonic::Status;

use super::holdings::{holding_covers, local_holding, shareable};
use super::receive::{PeerSource, Wanted, fetch_from_peer};
use super::serve::serve;
use crate::catalog::{DownloadProgress, Fetcher, ModelEntry, Presence, Want, presence};
use crate::discovery::PeerTable;
use crate::engine::WeightSupplier;
use crate::proto::pb;
use crate::server::WeightStream;

/// Knobs of the supply.
#[derive(Debug, Clone)]
pub struct SupplyConfig {
    /// How long a node that has nothing of its model waits for a peer holding it to
    /// appear before it tries the Hub (peers announce themselves twice a second).
    pub peer_wait: Duration,
    /// A transfer whose stream is silent this long is given up.
    pub idle_timeout: Duration,
    /// Whether to fetch from the Hub when no peer holds what is needed.
    pub hub: bool,
    /// Take tensors from peers even where no manifest can check them (size only).
    pub trust_peer_weights: bool,
}

impl Default for SupplyConfig {
    fn default() -> Self {
        SupplyConfig {
            peer_wait: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            hub: true,
            trust_peer_weights: false,
        }
    }
}

/// Bytes moved, for the node's report (and the tests that check a node received only its
/// layers).
#[derive(Debug, Default)]
pub struct SupplyStats {
    pub bytes_from_peers: AtomicU64,
    pub bytes_from_hub: AtomicU64,
    pub bytes_served: Arc<AtomicU64>,
    pub peer_transfers: AtomicU64,
    pub failed_transfers: AtomicU64,
}

/// See the module docs.
pub struct WeightSupply {
    node_id: String,
    entry: ModelEntry,
    models_dir: PathBuf,
    peers: Arc<PeerTable>,
    config: SupplyConfig,
    progress: DownloadProgress,
    stats: SupplyStats,
    /// One transfer at a time.
    busy: tokio::sync::Mutex<()>,
    /// Layer ranges known to be here.
    covered: Mutex<Vec<Range<usize>>>,
    /// What the node holds, as last read from the disk (cleared by every transfer).
    holding: Mutex<Option<Option<pb::ModelHolding>>>,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for WeightSupply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightSupply")
            .field("node_id", &self.node_id)
            .field("model", &self.entry.id)
            .field("models_dir", &self.models_dir)
            .finish()
    }
}

impl WeightSupply {
    pub fn new(
        node_id: &str,
        entry: ModelEntry,
        models_dir: PathBuf,
        peers: Arc<PeerTable>,
        config: SupplyConfig,
    ) -> Self {
        WeightSupply {
            node_id: node_id.to_string(),
            entry,
            models_dir,
            peers,
            config,
            // A node's log shows its downloads as they go (and its report keeps them).
            progress: DownloadProgress::new(crate::catalog::progress::Display::Log(
                std::time::Duration::from_secs(10),
            )),
            stats: SupplyStats::default(),
            busy: tokio::sync::Mutex::new(()),
            covered: Mutex::new(Vec::new()),
            holding: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    pub fn model_id(&self) -> &str {
        &self.entry.id
    }

    pub fn stats(&self) -> &SupplyStats {
        &self.stats
    }

    /// What this node holds of its model (for `CollectTopology`).
    pub fn holding(&self) -> Option<pb::ModelHolding> {
        let mut cached = self.holding.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holding) = cached.as_ref() {
            return holding.clone();
        }
        let holding = match local_holding(&self.entry, &self.models_dir) {
            Ok(holding) => holding,
            Err(error) => {
                tracing::warn!("cannot tell what of {} is here: {error:#}", self.entry.id);
                None
            }
        };
        *cached = Some(holding.clone());
        holding
    }

    fn forget_holding(&self) {
        *self.holding.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the tensors of `layers` are known to be here (no disk access).
    pub fn ready_for(&self, layers: &Range<usize>) -> bool {
        self.covered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.start <= layers.start && layers.end <= r.end)
    }

    /// Serves a peer's `FetchWeights` request from what is here.
    pub fn serve(&self, request: pb::WeightRequest) -> Result<WeightStream, Status> {
        serve(
            &self.entry,
            &self.models_dir,
            &request,
            self.stats.bytes_served.clone(),
        )
    }

    /// Makes sure the header and the small shared tensors are here, so the engine can open
    /// the model before the node knows its layers. Waits up to `peer_wait` for a peer
    /// that holds them, then tries the Hub.
    pub async fn ensure_header(&self) -> anyhow::Result<()> {
        self.ensure(None).await
    }

    /// Makes sure the tensors a shard of `layers` needs are here.
    pub async fn ensure_layers(&self, layers: Range<usize>) -> anyhow::Result<()> {
        if self.ready_for(&layers) {
            return Ok(());
        }
        self.ensure(Some(layers)).await
    }

    async fn ensure(&self, wanted: Wanted) -> anyhow::Result<()> {
        let _busy = self.busy.lock().await;
        if self.here(&wanted).await? {
            return Ok(());
        }
        let result = self.transfer(&wanted).await;
        self.forget_holding();
        match &result {
            Ok(()) => {
                if !self.here(&wanted).await? {
                    anyhow::bail!(
                        "the transfer ended but {} is still not all here",
                        describe(&wanted, &self.entry)
                    );
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(error) => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{error:#}"));
            }
        }
        result
    }

    /// Whether `wanted` is here (reading the disk); remembers covered layers.
    async fn here(&self, wanted: &Wanted) -> anyhow::Result<bool> {
        let entry = self.entry.clone();
        let dir = self.models_dir.clone();
        let here = tokio::task::spawn_blocking(move || presence(&entry, &dir))
            .await
            .context("the presence check failed")?;
        let n_layers = self.entry.layers;
        let ok = match (wanted, &here) {
            (_, Presence::Whole) => {
                self.remember(0..n_layers);
                true
            }
            (_, Presence::Nothing) => false,
            (None, Presence::Layers(set)) => set.shared,
            (Some(layers), here) => here.covers(layers, n_layers),
        };
        if ok && let Some(layers) = wanted {
            self.remember(layers.clone());
        }
        Ok(ok)
    }

    fn remember(&self, layers: Range<usize>) {
        self.covered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(layers);
    }

    /// Peers first (every one that holds what is wanted, until one delivers), then the Hub.
    async fn transfer(&self, wanted: &Wanted) -> anyhow::Result<()> {
        let what = describe(wanted, &self.entry);
        let mut failures: Vec<String> = Vec::new();
        let mut tried_any = false;
        if shareable(&self.entry) {
            let deadline = Instant::now()
                + if wanted.is_none() {
                    self.config.peer_wait
                } else {
                    Duration::ZERO
                };
            let mut joined = self.peers.subscribe();
            loop {
                let holders = self.holders(wanted).await;
                for (node_id, holding, source) in holders {
                    tried_any = true;
                    match self.fetch_from(&source, &holding, wanted).await {
                        Ok(bytes) => {
                            tracing::info!("received {what} from peer {node_id} ({bytes} bytes)");
                            return Ok(());
                        }
                        Err(error) => {
                            self.stats.failed_transfers.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("fetching {what} from peer {node_id} failed: {error:#}");
                            failures.push(format!("peer {node_id}: {error:#}"));
                        }
                    }
                }
                if tried_any || Instant::now() >= deadline {
                    break;
                }
                // Wait for the peer view to change (a holder may be about to join).
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, joined.changed()).await;
            }
        }
        if self.config.hub && self.entry.huggingface.is_some() {
            match self.fetch_from_hub(wanted).await {
                Ok(()) => return Ok(()),
                Err(error) => failures.push(format!("the Hub: {error:#}")),
            }
        }
        let peers = if tried_any {
            "the peers that hold them failed"
        } else {
            "no peer holds them"
        };
        Err(anyhow!(
            "node {} lacks {what} and {peers}{}",
            self.node_id,
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", failures.join("; "))
            }
        ))
    }

    /// The joined peers serving this model that hold what is wanted, with a client each.
    async fn holders(&self, wanted: &Wanted) -> Vec<(String, pb::ModelHolding, PeerSource)> {
        let mut found = Vec::new();
        for peer in self.peers.joined() {
            if peer.model_id != self.entry.id {
                continue;
            }
            let Some(handle) = self.peers.handle(&peer.node_id) else {
                continue;
            };
            let answer = async {
                let peer_handle = handle.ensure_ready().await?;
                let topology = peer_handle.collect_topology().await?;
                let holding = topology.nodes.first().and_then(|n| {
                    n.holdings
                        .iter()
                        .find(|h| h.model_id == self.entry.id)
                        .cloned()
                });
                anyhow::Ok((holding, peer_handle.weights_client()?))
            };
            match answer.await {
                Ok((Some(holding), client))
                    if holding_covers(&holding, wanted.as_ref(), self.entry.layers) =>
                {
                    found.push((
                        peer.node_id.clone(),
                        holding,
                        PeerSource {
                            node_id: peer.node_id.clone(),
                            client,
                            runtime: tokio::runtime::Handle::current(),
                            idle_timeout: self.config.idle_timeout,
                            trust_without_manifest: self.config.trust_peer_weights,
                        },
                    ));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!("cannot ask peer {} what it holds: {error:#}", peer.node_id)
                }
            }
        }
        // Peers with the whole model first: they can serve any later plan too.
        found.sort_by_key(|(_, holding, _)| !holding.whole);
        found
    }

    async fn fetch_from(
        &self,
        source: &PeerSource,
        holding: &pb::ModelHolding,
        wanted: &Wanted,
    ) -> anyhow::Result<u64> {
        let what = format!(
            "{} from peer {}",
            describe(wanted, &self.entry),
            source.node_id
        );
        let progress = self.progress.start(&self.entry.id, &what, 0);
        let (entry, dir, holding, wanted) = (
            self.entry.clone(),
            self.models_dir.clone(),
            holding.clone(),
            wanted.clone(),
        );
        let source = PeerSource {
            node_id: source.node_id.clone(),
            client: source.client.clone(),
            runtime: source.runtime.clone(),
            idle_timeout: source.idle_timeout,
            trust_without_manifest: source.trust_without_manifest,
        };
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let result = fetch_from_peer(
                &source, &entry, &dir, &holding, &wanted, &counter, &progress,
            );
            match &result {
                Ok(_) => progress.finish(),
                Err(error) => progress.fail(&format!("{error:#}")),
            }
            result
        })
        .await
        .context("the transfer task failed");
        self.stats
            .bytes_from_peers
            .fetch_add(received.load(Ordering::Relaxed), Ordering::Relaxed);
        let bytes = outcome??;
        self.stats.peer_transfers.fetch_add(1, Ordering::Relaxed);
        Ok(bytes)
    }

    async fn fetch_from_hub(&self, wanted: &Wanted) -> anyhow::Result<()> {
        let (entry, dir, progress) = (
            self.entry.clone(),
            self.models_dir.clone(),
            self.progress.clone(),
        );
        let want = match wanted {
            Some(layers) => Want::Layers(layers.clone()),
            None => Want::Header,
        };
        let result = tokio::task::spawn_blocking(move || {
            Fetcher::from_env(progress)
                .fetch(&entry, &dir, want)
                .map(|_| ())
        })
        .await
        .context("the Hub fetch task failed")?;
        // The progress keeps each model's latest download: this one.
        if let Some(status) = self.progress.status(&self.entry.id) {
            self.stats
                .bytes_from_hub
                .fetch_add(status.bytes_done, Ordering::Relaxed);
        }
        result
    }

    /// The downloads from the Hub this supply ran or runs.
    pub fn downloads(&self) -> Vec<crate::catalog::DownloadStatus> {
        self.progress.snapshot()
    }

    /// The supply's part of the node's report.
    pub fn info(&self) -> serde_json::Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "model": self.entry.id,
            "holding": self.holding().map(|h| holding_json(&h)),
            "bytes_from_peers": load(&self.stats.bytes_from_peers),
            "bytes_from_hub": load(&self.stats.bytes_from_hub),
            "bytes_served": load(&self.stats.bytes_served),
            "peer_transfers": load(&self.stats.peer_transfers),
            "failed_transfers": load(&self.stats.failed_transfers),
            "downloads": self.progress.snapshot(),
            "last_error": self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }
}

fn holding_json(holding: &pb::ModelHolding) -> serde_json::Value {
    json!({
        "whole": holding.whole,
        "layers": holding.layers.iter().map(|r| format!("{}..{}", r.start, r.end)).collect::<Vec<_>>(),
        "embedding": holding.embedding,
        "head": holding.head,
    })
}

/// "layers 10–19 of X", "the header of X".
fn describe(wanted: &Wanted, entry: &ModelEntry) -> String {
    match wanted {
        Some(layers) => format!(
            "layers {}–{} of {}",
            layers.start,
            layers.end.saturating_sub(1),
            entry.id
        ),
        None => format!("the header of {}", entry.id),
    }
}

/// The engine's view of the supply: the header before it opens the model, and the
/// counters in its report.
impl WeightSupplier for WeightSupply {
    fn ensure_header(&self) -> futures::future::BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(WeightSupply::ensure_header(self))
    }

    fn info(&self) -> serde_json::Value {
        WeightSupply::info(self)
    }
}
