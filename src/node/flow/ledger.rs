//! What a node remembers about requests passing through it: the last step of each it
//! accepted (a retried message whose first copy arrived must not run twice) and the last
//! it passed on (the origin asks, to tell a slow ring from a lost message), and the
//! requests that have finished (late steps of them are refused).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// The last step of each request this node accepted, bounded: past the bound, the request
/// that has gone longest without a step is forgotten first (a request that finished is
/// forgotten at once and takes no room, so a live request is never pushed out by ones
/// that came and went).
#[derive(Default)]
pub struct StepLedger {
    /// Per request: its steps, and when it was last touched (a counter).
    last: HashMap<String, (Steps, u64)>,
    /// The requests by when they were last touched, oldest first.
    by_touch: BTreeMap<u64, String>,
    clock: u64,
}

/// How far one request got on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// The last step accepted.
    pub accepted: u64,
    /// The last step whose output left this node, if any did.
    pub passed: Option<u64>,
}

impl StepLedger {
    const CAPACITY: usize = 4096;

    /// Whether `step` of `request_id` is new here (and records it).
    pub fn accept(&mut self, request_id: &str, step: u64) -> bool {
        self.clock += 1;
        let now = self.clock;
        match self.last.get_mut(request_id) {
            Some((steps, _)) if steps.accepted >= step => false,
            Some((steps, touched)) => {
                steps.accepted = step;
                self.by_touch.remove(touched);
                *touched = now;
                self.by_touch.insert(now, request_id.to_string());
                true
            }
            None => {
                if self.last.len() >= Self::CAPACITY
                    && let Some((_, oldest)) = self.by_touch.pop_first()
                {
                    self.last.remove(&oldest);
                }
                self.by_touch.insert(now, request_id.to_string());
                let steps = Steps {
                    accepted: step,
                    passed: None,
                };
                self.last.insert(request_id.to_string(), (steps, now));
                true
            }
        }
    }

    /// The output of `step` of `request_id` left this node (a request it does not know,
    /// one that finished meanwhile, is not recorded).
    pub fn passed(&mut self, request_id: &str, step: u64) {
        if let Some((steps, _)) = self.last.get_mut(request_id) {
            steps.passed = Some(steps.passed.map_or(step, |p| p.max(step)));
        }
    }

    /// How far `request_id` got here, if a step of it was accepted.
    pub fn steps(&self, request_id: &str) -> Option<Steps> {
        self.last.get(request_id).map(|(steps, _)| *steps)
    }

    /// Whether a step of `request_id` was accepted here before.
    pub fn knows(&self, request_id: &str) -> bool {
        self.last.contains_key(request_id)
    }

    pub fn forget(&mut self, request_id: &str) {
        if let Some((_, touched)) = self.last.remove(request_id) {
            self.by_touch.remove(&touched);
        }
    }

    /// Requests remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len()
    }
}

/// Requests that have finished, the most recent ones.
#[derive(Default)]
pub struct Finished {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Finished {
    const CAPACITY: usize = 1024;

    pub fn insert(&mut self, request_id: &str) {
        if self.ids.insert(request_id.to_string()) {
            if self.order.len() == Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.ids.remove(&oldest);
            }
            self.order.push_back(request_id.to_string());
        }
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.ids.contains(request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_requests_make_no_room_for_evicting_a_live_one() {
        let mut ledger = StepLedger::default();
        assert!(ledger.accept("long", 1));
        // Far more requests than the bound come and finish while "long" runs on.
        for i in 0..2 * StepLedger::CAPACITY {
            let id = format!("short-{i}");
            assert!(ledger.accept(&id, 0));
            ledger.forget(&id);
        }
        assert!(ledger.knows("long"), "a live request was forgotten");
        assert!(!ledger.accept("long", 1), "a retried step would run twice");
        assert!(ledger.accept("long", 2));
    }

    #[test]
    fn a_step_passed_on_is_recorded_only_for_a_known_request_and_never_goes_back() {
        let mut ledger = StepLedger::default();
        ledger.passed("unknown", 3);
        assert_eq!(ledger.steps("unknown"), None);
        assert!(ledger.accept("r", 0));
        assert_eq!(ledger.steps("r").unwrap().passed, None);
        assert!(ledger.accept("r", 1));
        ledger.passed("r", 1);
        ledger.passed("r", 0);
        let steps = ledger.steps("r").unwrap();
        assert_eq!((steps.accepted, steps.passed), (1, Some(1)));
        ledger.forget("r");
        assert_eq!(ledger.steps("r"), None);
    }

    #[test]
    fn past_the_bound_the_request_idle_longest_goes_first() {
        let mut ledger = StepLedger::default();
        assert!(ledger.accept("live", 0));
        // Requests whose origins went away without finishing them fill the ledger, while
        // "live" keeps taking steps.
        for i in 0..2 * StepLedger::CAPACITY {
            assert!(ledger.accept(&format!("abandoned-{i}"), 0));
            if i % 64 == 0 {
                assert!(ledger.accept("live", 1 + i as u64 / 64));
            }
            assert!(
                ledger.knows("live"),
                "the live request was evicted before idle ones (after {i} others)"
            );
        }
        assert!(!ledger.knows("abandoned-0"), "the ledger is bounded");
        assert!(ledger.len() <= StepLedger::CAPACITY);
    }
}
