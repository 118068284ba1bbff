//! Telling a slow ring from a lost message.
//!
//! On a busy ring a late result proves nothing: the step may wait in a shard's batch
//! behind other requests' prompt chunks. So when a step's deadline passes there, the
//! origin asks every node of the plan how far it got with the request (each node's ledger
//! keeps the last step it accepted and the last whose output it passed on). A node that
//! passed the awaited step on to a next node that never accepted it, or a last node that
//! sent back a result the origin never got, shows the message was lost on the way: no
//! wait brings it, and the request goes on in a new epoch (see `epoch`).

use super::RequestFlow;
use super::ledger::Steps;
use crate::topology::Partition;

impl RequestFlow {
    /// How far each node of `plan` got with the request `wire_id`, in plan order: `None`
    /// where a node knows nothing of it or did not answer in time.
    pub(super) async fn progress_along(
        &self,
        plan: &Partition,
        wire_id: &str,
    ) -> Vec<Option<Steps>> {
        let timeout = self.peers.config().timeouts.health;
        let asks = plan.entries.iter().map(|entry| async move {
            if entry.node_id == self.node_id {
                return self.shard.steps(wire_id);
            }
            let handle = self.peers.handle(&entry.node_id)?;
            if !handle.state().is_usable() {
                return None;
            }
            let reply = tokio::time::timeout(timeout, async {
                let peer = handle.ensure_ready().await.ok()?;
                peer.request_progress(wire_id).await.ok()
            })
            .await
            .ok()??;
            reply.known.then_some(Steps {
                accepted: reply.accepted_step,
                passed: reply.passed_step,
            })
        });
        futures::future::join_all(asks).await
    }
}

/// Where the message of step `step` was lost along `plan`, if `progress` (as
/// [`RequestFlow::progress_along`] gives it) shows that a node passed the step on and the
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
