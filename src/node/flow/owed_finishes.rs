//! `FinishRequest` messages an origin could not deliver. When an epoch ends because one of
//! its nodes hung or was cut off, the origin tells the plan's nodes to drop the epoch's
//! caches, and that node does not hear it. A node that comes back would otherwise hold
//! the dead epoch's KV cache and its reservation until the idle cache lifetime (minutes)
//! ran out, and take fewer requests meanwhile. So the origin keeps what it owes each node
//! (bounded) and delivers it as soon as the node answers again (`finish`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Finishes kept per node; the oldest go first past this (their caches expire anyway).
const OWED_PER_NODE: usize = 256;

/// After this long a node has dropped the epoch's cache by itself (the engine's idle
/// cache lifetime): the finish is no longer worth sending.
const OWED_FOR: Duration = Duration::from_secs(600);

/// One undelivered finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owed {
    pub request_id: String,
    pub reason: String,
    since: Instant,
}

/// What the origin owes each node.
#[derive(Default)]
pub(super) struct OwedFinishes {
    owed: Mutex<HashMap<String, VecDeque<Owed>>>,
}

impl OwedFinishes {
    /// `node` did not hear that `request_id` is over.
    pub(super) fn owe(&self, node: &str, request_id: &str, reason: &str) {
        self.owe_since(node, request_id, reason, Instant::now());
    }

    fn owe_since(&self, node: &str, request_id: &str, reason: &str, since: Instant) {
        let mut owed = self.lock();
        let queue = owed.entry(node.to_string()).or_default();
        if queue.iter().any(|o| o.request_id == request_id) {
            return;
        }
        if queue.len() == OWED_PER_NODE {
            queue.pop_front();
        }
        queue.push_back(Owed {
            request_id: request_id.to_string(),
            reason: reason.to_string(),
            since,
        });
    }

    /// The nodes owed something now.
    pub(super) fn nodes(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Takes what `node` is owed, less what is too old to matter.
    pub(super) fn take(&self, node: &str) -> Vec<Owed> {
        let owed = self.lock().remove(node).unwrap_or_default();
        owed.into_iter()
            .filter(|o| o.since.elapsed() < OWED_FOR)
            .collect()
    }

    /// `owed` could not be delivered to `node` this time either.
    pub(super) fn owe_again(&self, node: &str, owed: Owed) {
        self.owe_since(node, &owed.request_id, &owed.reason, owed.since);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Owed>>> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_finishes_are_kept_once_per_request_bounded_and_dropped_when_stale() {
        let owed = OwedFinishes::default();
        owed.owe("n2", "req-1", "replanned");
        owed.owe("n2", "req-1", "replanned");
        owed.owe("n3", "req-2", "replanned");
        let stale = Instant::now() - OWED_FOR - Duration::from_secs(1);
        owed.owe_since("n2", "req-old", "replanned", stale);
        let mut nodes = owed.nodes();
        nodes.sort();
        assert_eq!(nodes, vec!["n2", "n3"]);
        let taken = owed.take("n2");
        assert_eq!(
            taken
                .iter()
                .map(|o| o.request_id.as_str())
                .collect::<Vec<_>>(),
            vec!["req-1"]
        );
        assert!(owed.take("n2").is_empty());
        for i in 0..OWED_PER_NODE + 5 {
            owed.owe("n4", &format!("req-{i}"), "replanned");
        }
        let taken = owed.take("n4");
        assert_eq!(taken.len(), OWED_PER_NODE);
        assert_eq!(taken[0].request_id, "req-5");
    }
}
