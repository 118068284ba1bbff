//! Telling a slow ring from a lost message.
//!
//! On a busy ring a late result proves nothing: the step may wait in a shard's batch
//! behind other requests' prompt chunks. So when a step's deadline passes there, the
//! origin asks every node of the plan how far it got with the request (each node's ledger
//! keeps the last step it accepted and the last whose output it passed on). A node that
//! passed the awaited step on to a next node that never accepted it, or a last node that
//! sent back a result the origin never got, shows the message was lost on the way: no
//! wait brings it, and the request goes on in a new epoch (see `epoch`). The same call
//! tells the origin which nodes are gone (`RingProbe::silent`): a node that answers about
//! the request is alive, so a missed deadline costs one round of calls, not two.

use super::RequestFlow;
use super::ledger::Steps;
use crate::topology::Partition;

/// One round of asking a plan's nodes about a request, at a missed deadline: which nodes
/// are gone, and how far each of the others got. One call per node answers both (an
/// answer about the request is a sign of life).
pub(super) struct RingProbe {
    /// Nodes of the plan (followers of a group too) that did not answer in time, whose
    /// handle is not usable, or that say their engine does not serve.
    pub(super) silent: Vec<String>,
    /// How far each entry's node got, in plan order: `None` where it knows nothing of
    /// the request or did not answer.
    pub(super) progress: Vec<Option<Steps>>,
}

impl RequestFlow {
    /// Asks every node of `plan` but this one and those in `known` (already counted as
    /// lost) how far it got with the request `wire_id`, each within the health timeout.
    /// A node that answers but whose engine does not serve (its last health answer said
    /// so, see `GrpcPeerHandle::serving_flag`) cannot run its layers: it counts as silent.
    pub(super) async fn probe_ring(
        &self,
        plan: &Partition,
        wire_id: &str,
        known: &[String],
    ) -> RingProbe {
        let timeout = self.peers.config().timeouts.health;
        let asks = plan
            .nodes()
            .filter(|node| !known.iter().any(|k| k == node))
            .map(|node| async move {
                if node == self.node_id {
                    return (node, Some(self.shard.steps(wire_id)));
                }
                let Some(handle) = self.peers.handle(node) else {
                    return (node, None);
                };
                if !handle.state().is_usable() {
                    return (node, None);
                }
                let reply = tokio::time::timeout(timeout, async {
                    let peer = handle.ensure_ready().await.ok()?;
                    peer.request_progress(wire_id).await.ok()
                })
                .await
                .ok()
                .flatten()
                .filter(|_| self.peers.serving(node));
                let steps = reply.map(|reply| {
                    reply.known.then_some(Steps {
                        accepted: reply.accepted_step,
                        passed: reply.passed_step,
                    })
                });
                (node, steps)
            });
        let answers = futures::future::join_all(asks).await;
        let silent = answers
            .iter()
            .filter(|(_, steps)| steps.is_none())
            .map(|(node, _)| node.to_string())
            .collect();
        let progress = plan
            .entries
            .iter()
            .map(|entry| {
                answers
                    .iter()
                    .find(|(node, _)| *node == entry.node_id)
                    .and_then(|(_, steps)| *steps)
                    .flatten()
            })
            .collect();
        RingProbe { silent, progress }
    }
}

/// Where the message of step `step` was lost along `plan`, if `progress` (as
/// [`RequestFlow::probe_ring`] gives it) shows that a node passed the step on and the
/// next one (or the origin `origin`, after the last node) never got it. The origin calls
/// this only while it still waits for the step's result.
pub(super) fn lost_message(
    plan: &Partition,
    progress: &[Option<Steps>],
    step: u64,
    origin: &str,
) -> Option<String> {
    let at = |k: usize| progress.get(k).copied().flatten();
    for (k, entry) in plan.entries.iter().enumerate() {
        let passed_on = at(k).and_then(|s| s.passed).is_some_and(|p| p >= step);
        if !passed_on {
            continue;
        }
        match plan.entries.get(k + 1) {
            None => {
                return Some(format!(
                    "node {} sent the result of step {step} back to node {origin}, which never got it",
                    entry.node_id
                ));
            }
            Some(next) if at(k + 1).is_none_or(|s| s.accepted < step) => {
                return Some(format!(
                    "node {} passed step {step} on to node {}, which never got it",
                    entry.node_id, next.node_id
                ));
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::PartitionEntry;

    fn ring(nodes: &[&str]) -> Partition {
        let entries = nodes
            .iter()
            .enumerate()
            .map(|(i, id)| PartitionEntry {
                node_id: id.to_string(),
                address: format!("127.0.0.1:{}", 9000 + i),
                start_layer: 10 * i,
                end_layer: 10 * (i + 1),
                followers: Vec::new(),
            })
            .collect();
        Partition {
            model_id: "m".into(),
            n_layers: 10 * nodes.len(),
            entries,
        }
    }

    fn at(accepted: u64, passed: Option<u64>) -> Option<Steps> {
        Some(Steps { accepted, passed })
    }

    #[test]
    fn a_step_still_queued_or_running_somewhere_is_slow_not_lost() {
        let plan = ring(&["a", "b", "c"]);
        // b has it (accepted, not passed on): slow.
        let progress = [at(5, Some(5)), at(5, Some(4)), at(4, Some(4))];
        assert_eq!(lost_message(&plan, &progress, 5, "a"), None);
        // Nobody passed step 5 on yet.
        let progress = [at(5, Some(4)), at(4, Some(4)), at(4, Some(4))];
        assert_eq!(lost_message(&plan, &progress, 5, "a"), None);
    }

    #[test]
    fn a_result_sent_back_and_never_received_is_lost() {
        let plan = ring(&["a", "b", "c"]);
        let progress = [at(5, Some(5)), at(5, Some(5)), at(5, Some(5))];
        let lost = lost_message(&plan, &progress, 5, "a").unwrap();
        assert!(lost.contains("node c sent the result of step 5"), "{lost}");
    }

    #[test]
    fn a_step_passed_on_that_the_next_node_never_accepted_is_lost() {
        let plan = ring(&["a", "b", "c"]);
        let progress = [at(5, Some(5)), at(4, Some(4)), at(4, Some(4))];
        let lost = lost_message(&plan, &progress, 5, "a").unwrap();
        assert!(lost.contains("node a passed step 5 on to node b"), "{lost}");
        // The next node knows nothing of the request (it restarted, say).
        let progress = [at(5, Some(5)), None, at(4, Some(4))];
        assert!(lost_message(&plan, &progress, 5, "a").is_some());
    }

    #[test]
    fn nodes_that_did_not_answer_show_nothing_lost() {
        let plan = ring(&["a", "b"]);
        assert_eq!(lost_message(&plan, &[None, None], 3, "a"), None);
    }
}
