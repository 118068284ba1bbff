//! A node's post office for its tensor-parallel groups: frames from the other members
//! arrive here (the node's links deliver them), wait in a box per batch until the member
//! running that batch takes them, and go out through the node's [`Wire`].
//!
//! The member running a batch is a plain thread (the batcher's worker on a leader, a
//! follower's runner elsewhere) that blocks on its box: no task, no channel per call.
//! A batch whose peer is lost, whose request is finished, or whose member failed is
//! *aborted*: every wait on it ends at once with the reason, and the other members are
//! told.
//!
//! A lost peer stays marked lost until a link to it joins again: a batch opened with it
//! afterwards is aborted as it opens, and a wait for its parts ends at once. Without the
//! mark, a link that broke just before a batch opened (nothing running to abort yet)
//! would leave that batch waiting out the part timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;

use super::batch::{BatchId, GroupBatch};
use super::frame::Frame;

/// How a node sends frames to the other members of its groups.
pub trait Wire: Send + Sync {
    /// Queues `frame` for node `to` without blocking; Err when `to` cannot be reached.
    fn send(&self, to: &str, frame: Frame) -> anyhow::Result<()>;
}

/// How long a member waits for another's part before it gives the batch up: for a
/// member that is alive but stuck (a follower loading its slice for the first batch of a
/// range takes a few seconds). A peer that dies, or whose link falls silent
/// (`crate::peer::group_link`'s heartbeats), or a request that ends aborts the wait at
/// once.
pub const PART_TIMEOUT: Duration = Duration::from_secs(60);

/// Boxes of batches nobody runs here are dropped after this long.
const STALE_BOX: Duration = Duration::from_secs(60);

/// What the hub counts (the engine's info and `/metrics` show it).
#[derive(Debug, Default)]
pub struct HubStats {
    pub batches_led: AtomicU64,
    pub batches_followed: AtomicU64,
    pub all_reduces: AtomicU64,
    pub gathers: AtomicU64,
    pub parts_sent: AtomicU64,
    pub parts_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub aborted: AtomicU64,
    /// Time the members spent in collective operations (waiting for the others
    /// included), in microseconds.
    pub collective_micros: AtomicU64,
}

impl HubStats {
    pub fn snapshot(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "batches_led": get(&self.batches_led),
            "batches_followed": get(&self.batches_followed),
            "all_reduces": get(&self.all_reduces),
            "gathers": get(&self.gathers),
            "parts_sent": get(&self.parts_sent),
            "parts_received": get(&self.parts_received),
            "bytes_sent": get(&self.bytes_sent),
            "bytes_received": get(&self.bytes_received),
            "aborted": get(&self.aborted),
            "collective_seconds": get(&self.collective_micros) as f64 / 1e6,
        })
    }
}

/// One batch's box.
#[derive(Default)]
struct BatchBox {
    /// Parts that arrived, by (operation step, sender).
    parts: HashMap<(u32, String), Vec<f32>>,
    aborted: Option<String>,
    /// Set while a member runs the batch here: its members and requests.
    running: Option<(Vec<String>, Vec<String>)>,
    touched: Option<Instant>,
}

/// What the hub's lock guards: the boxes, and the peers lost (with why) since their
/// link last joined. One lock, so that a batch opening and a peer being lost cannot miss
/// each other.
#[derive(Default)]
struct HubState {
    boxes: HashMap<BatchId, BatchBox>,
    lost: HashMap<String, String>,
}

/// A node's hub.
pub struct GroupHub {
    node_id: String,
    wire: RwLock<Option<Arc<dyn Wire>>>,
    state: Mutex<HubState>,
    arrived: Condvar,
    next_seq: AtomicU64,
    runs: mpsc::UnboundedSender<GroupBatch>,
    runs_taken: Mutex<Option<mpsc::UnboundedReceiver<GroupBatch>>>,
    part_timeout: Duration,
    pub stats: HubStats,
}

impl std::fmt::Debug for GroupHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHub")
            .field("node_id", &self.node_id)
            .field("boxes", &self.boxes())
            .finish_non_exhaustive()
    }
}

impl GroupHub {
    pub fn new(node_id: impl Into<String>) -> Arc<Self> {
        Self::with_timeout(node_id, PART_TIMEOUT)
    }

    pub fn with_timeout(node_id: impl Into<String>, part_timeout: Duration) -> Arc<Self> {
        let (runs, taken) = mpsc::unbounded_channel();
        Arc::new(GroupHub {
            node_id: node_id.into(),
            wire: RwLock::new(None),
            state: Mutex::new(HubState::default()),
            arrived: Condvar::new(),
            next_seq: AtomicU64::new(1),
            runs,
            runs_taken: Mutex::new(Some(taken)),
            part_timeout,
            stats: HubStats::default(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Sets how frames leave this node (once the node's links exist).
    pub fn set_wire(&self, wire: Arc<dyn Wire>) {
        *self.wire.write().unwrap_or_else(|p| p.into_inner()) = Some(wire);
    }

    /// The batches leaders hand this node, in the order they arrive (taken once, by
    /// whatever runs this node's followers).
    pub fn take_runs(&self) -> Option<mpsc::UnboundedReceiver<GroupBatch>> {
        self.runs_taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// A fresh id for a batch this node leads.
    pub fn next_batch(&self) -> BatchId {
        BatchId {
            leader: self.node_id.clone(),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Sends a frame to `to`.
    pub fn send(&self, to: &str, frame: Frame) -> anyhow::Result<()> {
        let wire = self
            .wire
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("this node has no links to its group's members")?;
        if let Frame::Part { values, .. } = &frame {
            self.stats.parts_sent.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_sent
                .fetch_add(values.len() as u64 * 4, Ordering::Relaxed);
        }
        wire.send(to, frame)
            .with_context(|| format!("node {} cannot reach group member {to}", self.node_id))
    }

    /// A frame from `from` (the node's links call this).
    pub fn deliver(&self, from: &str, frame: Frame) {
        match frame {
            Frame::Run(run) => {
                // The runner gone means the node is shutting down: the leader hears of
                // it when its wait for this member's parts ends.
                let _ = self.runs.send(run);
            }
            Frame::Part {
                batch, op, values, ..
            } => {
                self.stats.parts_received.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_received
                    .fetch_add(values.len() as u64 * 4, Ordering::Relaxed);
                let mut state = self.lock();
                prune(&mut state.boxes);
                let at = state.boxes.entry(batch).or_default();
                at.touched = Some(Instant::now());
                at.parts.insert((op, from.to_string()), values);
                drop(state);
                self.arrived.notify_all();
            }
            Frame::Abort { batch, reason } => {
                let mut state = self.lock();
                let at = state.boxes.entry(batch).or_default();
                at.touched = Some(Instant::now());
                at.aborted
                    .get_or_insert_with(|| format!("{from} gave the batch up: {reason}"));
                drop(state);
                self.arrived.notify_all();
            }
        }
    }

    /// `batch` runs here from now until [`GroupHub::close`]. A member already lost
    /// aborts it here at once (its waits end with why; the caller's abort tells the
    /// others).
    pub fn open(&self, batch: &GroupBatch) {
        let mut state = self.lock();
        let members = &batch.placement.members;
        let lost = members
            .iter()
            .find_map(|m| Some(format!("group member {m} is lost: {}", state.lost.get(m)?)));
        let at = state.boxes.entry(batch.batch.clone()).or_default();
        at.touched = Some(Instant::now());
        at.running = Some((members.clone(), batch.request_ids()));
        if let Some(reason) = lost {
            at.aborted.get_or_insert(reason);
        }
    }

    /// `batch` is over here: its box goes.
    pub fn close(&self, batch: &BatchId) {
        self.lock().boxes.remove(batch);
    }

    /// Waits for `from`'s part of step `op` of `batch`.
    pub fn receive(&self, batch: &BatchId, op: u32, from: &str) -> anyhow::Result<Vec<f32>> {
        let deadline = Instant::now() + self.part_timeout;
        let key = (op, from.to_string());
        let mut state = self.lock();
        loop {
            let HubState { boxes, lost } = &mut *state;
            let at = boxes.entry(batch.clone()).or_default();
            if let Some(values) = at.parts.remove(&key) {
                return Ok(values);
            }
            if let Some(reason) = &at.aborted {
                bail!("batch {batch} was given up: {reason}");
            }
            if let Some(reason) = lost.get(from) {
                bail!("batch {batch} was given up: group member {from} is lost: {reason}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no part from group member {from} for batch {batch} within {:?}",
                    self.part_timeout
                );
            }
            state = self
                .arrived
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Gives `batch` up here and tells its other `members`.
    pub fn abort(&self, batch: &BatchId, members: &[String], reason: &str) {
        self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.lock();
            let at = state.boxes.entry(batch.clone()).or_default();
            at.touched = Some(Instant::now());
            at.aborted.get_or_insert_with(|| reason.to_string());
        }
        self.arrived.notify_all();
        for member in members.iter().filter(|m| **m != self.node_id) {
            let frame = Frame::Abort {
                batch: batch.clone(),
                reason: reason.to_string(),
            };
            if let Err(error) = self.send(member, frame) {
                tracing::debug!("{error:#}");
            }
        }
    }

    /// A peer is gone: every batch running here with it is given up, and so is every
    /// batch opened with it until [`GroupHub::peer_joined`].
    pub fn peer_lost(&self, node: &str, reason: &str) {
        self.lock()
            .lost
            .insert(node.to_string(), reason.to_string());
        self.arrived.notify_all();
        self.abort_where(|members, _| members.iter().any(|m| m == node), reason);
    }

    /// A link to `node` is up (again): batches may run with it.
    pub fn peer_joined(&self, node: &str) {
        self.lock().lost.remove(node);
    }

    /// Why `node` is lost, if it is.
    pub fn lost(&self, node: &str) -> Option<String> {
        self.lock().lost.get(node).cloned()
    }

    /// A request is over: every batch running here with its rows is given up (a member
    /// that stopped answering must not hold this node's worker for long).
    pub fn request_finished(&self, request_id: &str) {
        self.abort_where(
            |_, requests| requests.iter().any(|r| r == request_id),
            &format!("request {request_id} ended"),
        );
    }

    fn abort_where(&self, matches: impl Fn(&[String], &[String]) -> bool, reason: &str) {
        let doomed: Vec<(BatchId, Vec<String>)> = self
            .lock()
            .boxes
            .iter()
            .filter_map(|(id, at)| {
                let (members, requests) = at.running.as_ref()?;
                (at.aborted.is_none() && matches(members, requests))
                    .then(|| (id.clone(), members.clone()))
            })
            .collect();
        for (batch, members) in doomed {
            tracing::info!("giving up group batch {batch}: {reason}");
            self.abort(&batch, &members, reason);
        }
    }

    /// Batches with a box here now (tests check that none is left behind).
    pub fn boxes(&self) -> usize {
        self.lock().boxes.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drops the boxes of batches nobody runs here that have not been touched for a while
/// (parts of a batch that was given up, arriving late).
fn prune(boxes: &mut HashMap<BatchId, BatchBox>) {
    if boxes.len() < 64 {
        return;
    }
    boxes.retain(|_, at| {
        at.running.is_some() || at.touched.is_some_and(|t| t.elapsed() < STALE_BOX)
    });
}
