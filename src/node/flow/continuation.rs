//! Requests that survive losing a node (DESIGN.md §4d).
//!
//! The origin holds everything a request needs to go on without the rest of its ring:
//! the prompt, every token generated so far, the step count and the sampling settings
//! (sampling is stateless per step: a seeded draw depends only on the seed and the token's
//! index). So when a node of the plan is lost — it leaves the peer view, a hop to it
//! fails, or a step passes its deadline and the node does not answer a health check —
//! the origin plans again over the nodes still there and runs a new *epoch* of the
//! request: prompt + generated tokens as one prefill, whose last row samples the next
//! token, then decoding as before. Each epoch travels under its own wire id
//! ([`epoch_id`]), so results of the old epoch that arrive late find nobody waiting and
//! are dropped; the client's stream never sees a repeated or missing token. The engine
//! makes a re-prefilled row bit-identical to the decode step that first produced it
//! (tests/engine/replay.rs), so greedy and seeded answers do not change.
//!
//! A node lost twice within a minute is *flapping*: new plans leave it out for a while
//! ([`LossRecord`]), so that a node that keeps dying does not keep costing re-plans.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::failure::FailureKind;

/// The id a request's epoch travels under: the request's own id for the first, a suffix
/// for each re-plan.
pub fn epoch_id(request_id: &str, epoch: u32) -> String {
    if epoch == 0 {
        request_id.to_string()
    } else {
        format!("{request_id}.e{epoch}")
    }
}

/// Why an epoch of a request ended before the request did.
#[derive(Debug, Clone)]
pub struct Interruption {
    /// Nodes known to be gone (left the peer view, or named by a failed hop); more may
    /// be found by probing the plan.
    pub lost: Vec<String>,
    pub reason: String,
    /// What the request fails with if it cannot go on (too many re-plans).
    pub kind: FailureKind,
}

impl Interruption {
    pub fn new(reason: impl Into<String>) -> Self {
        Interruption {
            lost: Vec::new(),
            reason: reason.into(),
            kind: FailureKind::PeerLost,
        }
    }

    pub fn lost(node: impl Into<String>, reason: impl Into<String>) -> Self {
        Interruption {
            lost: vec![node.into()],
            ..Self::new(reason)
        }
    }
}

/// One re-plan of a request, as the final summary reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Replan {
    /// The epoch it started (1 for the first re-plan).
    pub epoch: u32,
    /// The nodes left out of the new plan.
    pub lost: Vec<String>,
    pub reason: String,
    /// The new ring, "a[0,15) → c[15,30)".
    pub ring: String,
    /// From noticing the loss to the first token of the new epoch (re-prefill included).
    pub seconds: f64,
}

/// How long a loss is remembered, and how many within it make a node flapping.
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);
const FLAP_LOSSES: usize = 2;
/// How long a flapping node is left out of new plans, after its last loss.
pub const FLAP_PENALTY: Duration = Duration::from_secs(120);

/// Requests that lose a node that has no handle left within this long lost it once (a
/// death is seen by every request running through the node, within a deadline or two of
/// each other).
const SAME_LOSS: Duration = Duration::from_secs(5);

/// The nodes this node has seen lost, recently.
#[derive(Default)]
pub struct LossRecord {
    losses: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// The peer handle (its incarnation in the peer table) each node was last lost
    /// through: a node restarted since has a new handle, so only then is a later loss a
    /// new one.
    incarnations: Mutex<HashMap<String, u64>>,
}

/// A node left out of new plans for flapping, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Flapping {
    pub node_id: String,
    pub losses_last_minute: usize,
    pub left_out_for_seconds: f64,
}

impl LossRecord {
    /// Records that a request lost `node` now (a re-plan left it out), reached through
    /// the peer table's handle `incarnation` (0 when the node has no handle left; not the
    /// handle's address, which a restarted node's new handle may be given again).
    /// Several requests losing the same incarnation (or, with no handle to tell, losing the
    /// node within a few seconds) are one loss.
    pub fn record(&self, node: &str, incarnation: u64) {
        let now = Instant::now();
        {
            let mut incarnations = self.incarnations.lock().unwrap_or_else(|p| p.into_inner());
            let known = incarnations.get(node).copied();
            if incarnation != 0 {
                incarnations.insert(node.to_string(), incarnation);
            }
            // The same handle lost again is the same loss; a new handle (a restarted or
            // moved node) lost is a new one, however soon. Without a handle to tell them
            // apart, a loss within a few seconds of the last is taken as the same.
            let same = if incarnation != 0 {
                known == Some(incarnation)
            } else {
                self.lock()
                    .get(node)
                    .and_then(|t| t.back().copied())
                    .is_some_and(|last| now.duration_since(last) < SAME_LOSS)
            };
            if same {
                return;
            }
        }
        let mut losses = self.lock();
        let times = losses.entry(node.to_string()).or_default();
        times.push_back(now);
        while times.len() > FLAP_LOSSES * 4 {
            times.pop_front();
        }
        if Self::flapping_until(times, now).is_some() {
            tracing::warn!(
                "node {node} was lost {} times within {FLAP_WINDOW:?}: left out of new plans for {FLAP_PENALTY:?}",
                times.len()
            );
        }
    }

    /// Whether new plans should leave `node` out now.
    pub fn is_flapping(&self, node: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .get(node)
            .is_some_and(|times| Self::flapping_until(times, now).is_some())
    }

    /// Every node left out now, for the resource report.
    pub fn flapping(&self) -> Vec<Flapping> {
        let now = Instant::now();
        let mut out: Vec<Flapping> = self
            .lock()
            .iter()
            .filter_map(|(node, times)| {
                Self::flapping_until(times, now).map(|until| Flapping {
                    node_id: node.clone(),
                    losses_last_minute: times
                        .iter()
                        .filter(|t| now.duration_since(**t) <= FLAP_WINDOW)
                        .count(),
                    left_out_for_seconds: (until - now).as_secs_f64(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// Until when a node with these losses is left out: two losses within the window,
    /// the latter less than the penalty ago.
    fn flapping_until(times: &VecDeque<Instant>, now: Instant) -> Option<Instant> {
        let last = *times.back()?;
        let until = last + FLAP_PENALTY;
        let close_pair = times
            .iter()
            .zip(times.iter().skip(FLAP_LOSSES - 1))
            .any(|(a, b)| b.duration_since(*a) <= FLAP_WINDOW);
        (close_pair && until > now).then_some(until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        self.losses.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_after_the_first_travel_under_their_own_ids() {
        assert_eq!(epoch_id("req-1", 0), "req-1");
        assert_eq!(epoch_id("req-1", 2), "req-1.e2");
        assert_ne!(epoch_id("req-1", 1), epoch_id("req-1", 2));
    }

    #[test]
    fn one_loss_seen_by_many_requests_is_one_loss() {
        let record = LossRecord::default();
        record.record("b", 7);
        record.record("b", 7);
        record.record("b", 0);
        assert!(!record.is_flapping("b"));
    }

    #[test]
    fn one_loss_is_not_flapping_two_within_a_minute_are() {
        let record = LossRecord::default();
        record.record("b", 1);
        assert!(!record.is_flapping("b"));
        assert!(record.flapping().is_empty());
        // Restarted (a new handle) and lost again at once: a second loss.
        record.record("b", 2);
        assert!(record.is_flapping("b"));
        assert!(!record.is_flapping("c"));
        let report = record.flapping();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].node_id, "b");
        assert_eq!(report[0].losses_last_minute, 2);
        assert!(report[0].left_out_for_seconds > 100.0);
    }

    #[test]
    fn losses_far_apart_or_long_ago_are_not_flapping() {
        let now = Instant::now();
        let Some(long_ago) = now.checked_sub(FLAP_PENALTY + Duration::from_secs(1)) else {
            return; // a clock this young cannot express the case
        };
        let Some(before_that) = long_ago.checked_sub(Duration::from_secs(1)) else {
            return;
        };
        // Two close losses, but the penalty has passed.
        let times = VecDeque::from([before_that, long_ago]);
        assert!(LossRecord::flapping_until(&times, now).is_none());
        // Two recent losses more than the window apart.
        let Some(earlier) = now.checked_sub(FLAP_WINDOW + Duration::from_secs(5)) else {
            return;
        };
        let times = VecDeque::from([earlier, now]);
        assert!(LossRecord::flapping_until(&times, now).is_none());
    }
}
