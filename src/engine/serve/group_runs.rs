//! A loaded model's part in tensor-parallel groups: leading a batch (the batcher formed
//! it; the followers are handed its rows and run them with the leader) and following one
//! (a leader's batch, run through this node's slice).
//!
//! Every member takes the batch's caches out of its store, runs the same rows through its
//! slice with the same collective calls, and puts the caches back; a member that fails
//! gives the batch up on all of them (its caches are dropped: a half-run batch must not
//! be continued), and the origin plans the request again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};

use super::loaded_model::{LoadedModel, cache_key};
use crate::engine::group::{
    Frame, GroupBatch, GroupHub, GroupPlacement, GroupRow, MemberCollective,
};
use crate::engine::model::loaded_shard::LoadedShard;
use crate::engine::model::sequence_cache::SequenceCache;
use crate::engine::model::shard_io::{ShardInput, ShardOutput};

impl LoadedModel {
    /// Runs a batch this node leads: hands its `rows` to the followers, then runs
    /// `batch` (the same rows, with the leader's caches) with them.
    pub(super) fn lead_group(
        &self,
        shard: &LoadedShard,
        placement: &Arc<GroupPlacement>,
        (start, end): (usize, usize),
        rows: Vec<GroupRow>,
        batch: Vec<(ShardInput, &mut SequenceCache)>,
    ) -> anyhow::Result<Vec<ShardOutput>> {
        let hub = self
            .groups
            .as_ref()
            .context("this node has no links to tensor-parallel groups")?;
        let run = GroupBatch {
            batch: hub.next_batch(),
            model_id: self.model_id().to_string(),
            start_layer: start,
            end_layer: end,
            placement: GroupPlacement::clone(placement),
            rows,
        };
        hub.open(&run);
        hub.stats.batches_led.fetch_add(1, Ordering::Relaxed);
        let outcome = (|| {
            for follower in &run.placement.members[1..] {
                hub.send(follower, Frame::Run(run.clone()))?;
            }
            let members = &run.placement.members;
            let mut group = MemberCollective::new(hub, &run.batch, members, 0, run.placement.wire);
            shard.forward_batch_with(batch, &mut group)
        })();
        if let Err(error) = &outcome {
            hub.abort(&run.batch, &run.placement.members, &format!("{error:#}"));
        }
        hub.close(&run.batch);
        outcome
    }

    /// Runs a batch a leader handed this node (the node's follower runner calls this, on
    /// a thread of its own, batch after batch in the order they came). Err: this member
    /// failed it, and the others were told.
    pub fn follow_group(&self, run: GroupBatch, hub: &GroupHub) -> anyhow::Result<()> {
        hub.open(&run);
        hub.stats.batches_followed.fetch_add(1, Ordering::Relaxed);
        let (batch, members) = (run.batch.clone(), run.placement.members.clone());
        let outcome = self.follow(run, hub);
        if let Err(error) = &outcome {
            hub.abort(&batch, &members, &format!("{error:#}"));
        }
        hub.close(&batch);
        outcome
    }

    fn follow(&self, run: GroupBatch, hub: &GroupHub) -> anyhow::Result<()> {
        let placement = &run.placement;
        let me = placement
            .member(hub.node_id())
            .filter(|&m| m > 0)
            .with_context(|| {
                format!(
                    "node {} is not a follower of group batch {}",
                    hub.node_id(),
                    run.batch
                )
            })?;
        if run.model_id != self.model_id() {
            bail!(
                "group batch {} is for model {}; this node serves {}",
                run.batch,
                run.model_id,
                self.model_id()
            );
        }
        let slice = placement.slices.get(me).cloned();
        let shard = self
            .shard_sliced(run.start_layer, run.end_layer, slice)
            .with_context(|| format!("node {}", hub.node_id()))?;
        let per_position = shard.kv_bytes_per_position();
        let (start, end) = (run.start_layer, run.end_layer);
        let keys: Vec<String> = run
            .rows
            .iter()
            .map(|row| cache_key(&row.request_id, start, end, Some(me)))
            .collect();
        let mut caches = Vec::with_capacity(run.rows.len());
        {
            let mut store = self.caches();
            for (row, key) in run.rows.iter().zip(&keys) {
                let taken = shard.check_input(&row.input, row.position).and_then(|_| {
                    store.checkout(
                        key,
                        row.position,
                        row.reserve_positions * per_position,
                        || Ok(shard.new_cache()),
                    )
                });
                match taken {
                    Ok(cache) => caches.push(cache),
                    Err(error) => {
                        // The caches taken so far belong to a batch that will not run.
                        for key in &keys[..caches.len()] {
                            store.remove(key);
                        }
                        return Err(error.context(format!("node {}", hub.node_id())));
                    }
                }
            }
        }
        let inputs = run.rows.into_iter().map(|row| row.input);
        let batch = inputs.zip(caches.iter_mut()).collect();
        let mut group =
            MemberCollective::new(hub, &run.batch, &placement.members, me, placement.wire);
        let result = shard.forward_batch_with(batch, &mut group);
        let mut store = self.caches();
        match result {
            Ok(_) => {
                for (key, cache) in keys.iter().zip(caches) {
                    store.checkin(key, cache);
                }
                drop(store);
                self.step_succeeded();
                Ok(())
            }
            Err(error) => {
                for key in &keys {
                    store.remove(key);
                }
                Err(error.context(format!("node {}", hub.node_id())))
            }
        }
    }
}

/// Runs the batches leaders hand `hub`'s node through `model`, one after another, on a
/// thread of its own (a follower's runner). The thread ends when the hub or the model is
/// dropped; None when the hub's batches were already taken by another runner.
pub fn spawn_follower(
    model: &Arc<LoadedModel>,
    hub: &Arc<GroupHub>,
) -> Option<std::thread::JoinHandle<()>> {
    let model = Arc::downgrade(model);
    spawn_follower_with(move || model.upgrade(), hub)
}

/// [`spawn_follower`] for a node whose model may be closed and opened again (the engine
/// resource): each batch runs through the model `model` gives then; a batch that comes
/// while there is none fails (its leader hears at once).
pub fn spawn_follower_with(
    model: impl Fn() -> Option<Arc<LoadedModel>> + Send + 'static,
    hub: &Arc<GroupHub>,
) -> Option<std::thread::JoinHandle<()>> {
    let mut runs = hub.take_runs()?;
    let hub = Arc::downgrade(hub);
    let runner = std::thread::Builder::new()
        .name("group-follower".into())
        .spawn(move || {
            while let Some(run) = runs.blocking_recv() {
                let Some(hub) = hub.upgrade() else {
                    return;
                };
                let Some(model) = model() else {
                    hub.abort(
                        &run.batch,
                        &run.placement.members,
                        &format!("node {} has no model open", hub.node_id()),
                    );
                    continue;
                };
                if let Err(error) = model.follow_group(run, &hub) {
                    tracing::warn!("group batch failed here: {error:#}");
                }
            }
        })
        .ok()?;
    Some(runner)
}
