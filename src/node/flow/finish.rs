//! Telling the nodes of a plan that a request (one epoch of it) is over, so that each
//! drops its cache and reservation, or keeps the prompt's blocks in its prefix cache; and
//! telling later the nodes that did not hear it (`owed_finishes`).

use std::sync::Weak;
use std::time::Duration;

use super::RequestFlow;
use super::owed_finishes::Owed;
use crate::topology::Partition;

/// How often the origin tries to deliver the finishes it owes.
const SETTLE_EVERY: Duration = Duration::from_secs(1);

impl RequestFlow {
    /// Tells every node of the plan that the request is over (in parallel, best effort),
    /// asking each to keep the blocks `keep` names in its prefix cache, and remembers
    /// which each kept.
    pub(super) async fn finish_everywhere(
        &self,
        request_id: &str,
        plan: &Partition,
        reason: &str,
        keep: &[u64],
    ) {
        // A group's followers too: their caches are the request's slices.
        let members = plan
            .entries
            .iter()
            .flat_map(|entry| entry.members().map(move |node| (node, entry)));
        let calls = members.map(|(node, entry)| async move {
            let kept = if node == self.node_id {
                self.finish_local(request_id, keep).await
            } else if let Some(handle) = self.peers.handle(node) {
                // Usable peers only: one that is gone or failing is not worth a connection
                // attempt now. It is owed the finish, delivered if it answers again
                // (`owed_finishes`): a node that hung or was cut off comes back with
                // the epoch's cache.
                if !handle.state().is_usable() {
                    self.origin.owed.owe(node, request_id, reason);
                    return;
                }
                match handle.ensure_ready().await {
                    Ok(peer) => match peer.finish_request(request_id, reason, keep).await {
                        Ok(kept) => kept as usize,
                        Err(error) => {
                            tracing::debug!(
                                "could not tell {node} to drop {request_id}: {error:#}"
                            );
                            self.origin.owed.owe(node, request_id, reason);
                            return;
                        }
                    },
                    Err(_) => {
                        self.origin.owed.owe(node, request_id, reason);
                        return;
                    }
                }
            } else {
                return;
            };
            let kept = kept.min(keep.len());
            if kept > 0 {
                self.origin.prefixes.record(
                    node,
                    entry.start_layer,
                    entry.end_layer,
                    &keep[..kept],
                );
            }
        });
        futures::future::join_all(calls).await;
    }

    /// The flow's task that delivers owed finishes to nodes that answer again.
    pub(super) async fn settle_owed_finishes(flow: Weak<RequestFlow>) {
        let mut tick = tokio::time::interval(SETTLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(flow) = flow.upgrade() else { return };
            for node in flow.origin.owed.nodes() {
                flow.settle_with(&node).await;
            }
        }
    }

    /// Delivers what `node` is owed if its handle is usable; keeps it owed otherwise.
    async fn settle_with(&self, node: &str) {
        let owed = self.origin.owed.take(node);
        if owed.is_empty() {
            return;
        }
        let keep_owing = |owed: Vec<Owed>| {
            for o in owed {
                self.origin.owed.owe_again(node, o);
            }
        };
        let Some(handle) = self.peers.handle(node).filter(|h| h.state().is_usable()) else {
            return keep_owing(owed);
        };
        let Ok(peer) = handle.ensure_ready().await else {
            return keep_owing(owed);
        };
        let mut owed = owed.into_iter();
        while let Some(o) = owed.next() {
            if let Err(error) = peer.finish_request(&o.request_id, &o.reason, &[]).await {
                // Still not answering: the rest waits for the next round rather than
                // each waiting out its own timeout now.
                tracing::debug!(
                    "could not yet tell {node} that {} is over: {error:#}",
                    o.request_id
                );
                return keep_owing(std::iter::once(o).chain(owed).collect());
            }
            tracing::info!(
                "told {node} that {} is over, now that it answers again",
                o.request_id
            );
        }
    }
}
