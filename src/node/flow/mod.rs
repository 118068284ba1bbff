//! The flow of requests through the ring (DESIGN.md §4).
//!
//! On the origin (the node whose API received the request; [`origin`], one [`epoch`] at a
//! time): plan the partition ([`plan`]), send the prompt's chunks to the first shard, wait
//! for the last shard's token, stream its text, send the token back to the first shard,
//! until end of sequence, a stop string or the token limit; then tell every node of the
//! plan to drop the request. A lost node costs a re-plan ([`continuation`]).
//!
//! On every node of the plan ([`shard`]): queue what arrives for the engine's batcher,
//! which runs the steps that are ready together; pass the outputs on to the next node, or
//! (on the last shard) sample and send the tokens to their origins. Everything bound for
//! one peer travels together ([`outbox`]). A failure on any node goes back to the origin
//! as an error result, so a request never hangs.
//!
//! The two sides keep their own state ([`origin_state`], [`shard_state`]); [`handler`]
//! is the flow as the gRPC service's handler, [`request`] what the API asks and hears.

mod config;
mod constraints;
mod continuation;
mod deadline;
mod drain;
mod epoch;
mod failure;
mod finish;
mod group;
mod handler;
mod layer_wait;
mod ledger;
mod model_facts;
mod origin;
mod origin_state;
mod outbox;
mod owed_finishes;
mod plan;
mod prefix_directory;
mod progress;
mod request;
mod shard;
mod shard_state;
mod stats;

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use tokio::sync::{Notify, mpsc};

use crate::discovery::PeerTable;
use crate::engine::group::GroupPlacement;
use crate::engine::{InferenceEngine, LoadedModel};
use crate::faults::Faults;
use crate::peer::GroupLinks;
use crate::resource::Managed;
use crate::supply::WeightSupply;
use crate::topology::DeviceCapabilities;

pub use config::FlowConfig;
pub use continuation::{Flapping, Replan};
pub use drain::DrainStatus;
pub use failure::{FailureKind, FlowError};
pub use origin::new_request_id;
pub use plan::describe;
pub use request::{GenerateRequest, GenerationEvent, GenerationSummary};
pub use stats::FlowStats;

use origin_state::OriginState;
use outbox::Outbox;
use shard_state::ShardState;

/// One node's part in the request flow: the origin side and the shard side.
pub struct RequestFlow {
    node_id: String,
    /// The model this node serves (known before the engine is ready).
    model_id: String,
    /// This node's gRPC address as it puts it in plans (peers use their own view).
    address: RwLock<String>,
    /// The gRPC server's bound port (0 until it listens).
    grpc_port: Arc<AtomicU16>,
    capabilities: DeviceCapabilities,
    engine: Arc<Managed<InferenceEngine>>,
    peers: Arc<PeerTable>,
    config: FlowConfig,
    /// Requests this node originated, and the nodes they lost.
    origin: OriginState,
    /// Generations this node originated that are still running (see `LiveGeneration`).
    generations: Arc<AtomicUsize>,
    /// Other requests' steps on this node.
    shard: ShardState,
    /// Everything bound for peers.
    outbox: Outbox,
    stats: Mutex<FlowStats>,
    /// Set by a drain: no new plans here, no steps of new requests.
    draining: Arc<AtomicBool>,
    /// Wakes the node's main loop when the API asks for a drain.
    drain_requested: Notify,
    /// Steps run as tasks of their own, which need an owned reference.
    this: Weak<Self>,
    /// Where the weights of a planned range come from when they are not here yet (a node
    /// serving a registry model); also serves this node's weights to its peers.
    supply: OnceLock<Arc<WeightSupply>>,
    /// Faults to inject (tests and chaos runs only, see `crate::faults`).
    faults: OnceLock<Arc<Faults>>,
    /// What plans need of the model, kept from the first plan (see `plan`).
    facts: OnceLock<model_facts::ModelFacts>,
    /// This node's links to the other members of its tensor-parallel groups (see
    /// `group`).
    group_links: OnceLock<Arc<GroupLinks>>,
    /// The placements of the groups this node leads, by their followers (see `group`).
    placements: Mutex<std::collections::HashMap<Vec<String>, Arc<GroupPlacement>>>,
    /// Held while this node opens links to a group's followers.
    group_connecting: tokio::sync::Mutex<()>,
}

impl RequestFlow {
    pub fn new(
        node_id: impl Into<String>,
        model_id: impl Into<String>,
        grpc_port: Arc<AtomicU16>,
        capabilities: DeviceCapabilities,
        engine: Arc<Managed<InferenceEngine>>,
        peers: Arc<PeerTable>,
        config: FlowConfig,
    ) -> Arc<Self> {
        let (completions, finished_batches) = mpsc::unbounded_channel();
        let flow = Arc::new_cyclic(|this: &Weak<Self>| RequestFlow {
            this: this.clone(),
            node_id: node_id.into(),
            model_id: model_id.into(),
            address: RwLock::new("127.0.0.1".into()),
            grpc_port,
            capabilities,
            engine,
            peers,
            config,
            origin: OriginState::default(),
            generations: Arc::new(AtomicUsize::new(0)),
            shard: ShardState::new(completions),
            outbox: Outbox::new(Self::on_undelivered(this.clone())),
            stats: Mutex::new(FlowStats::default()),
            draining: Arc::new(AtomicBool::new(false)),
            drain_requested: Notify::new(),
            supply: OnceLock::new(),
            faults: OnceLock::new(),
            facts: OnceLock::new(),
            group_links: OnceLock::new(),
            placements: Mutex::new(Default::default()),
            group_connecting: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(Self::take_finished_batches(
            Arc::downgrade(&flow),
            finished_batches,
        ));
        tokio::spawn(Self::settle_owed_finishes(Arc::downgrade(&flow)));
        flow
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Sets the node's weight supply (once, before the node serves).
    pub fn set_supply(&self, supply: Arc<WeightSupply>) {
        let _ = self.supply.set(supply);
    }

    pub fn supply(&self) -> Option<&Arc<WeightSupply>> {
        self.supply.get()
    }

    /// Sets the faults this node injects (once, before the node serves; only a node
    /// started with `--enable-fault-injection` has them).
    pub fn set_faults(&self, faults: Arc<Faults>) {
        let _ = self.faults.set(faults);
    }

    pub fn faults(&self) -> Option<&Arc<Faults>> {
        self.faults.get()
    }

    pub fn capabilities(&self) -> &DeviceCapabilities {
        &self.capabilities
    }

    pub fn stats(&self) -> FlowStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, update: impl FnOnce(&mut FlowStats)) {
        update(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The engine's opened model, through `ensure_ready`.
    async fn model(&self) -> anyhow::Result<Arc<LoadedModel>> {
        self.engine.ensure_ready().await?.model()
    }

    /// Requests in flight that this node originated (from `generate` until each ends).
    pub fn active_requests(&self) -> usize {
        self.generations.load(std::sync::atomic::Ordering::Relaxed)
    }
}
