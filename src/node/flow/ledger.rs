//! What a node remembers about requests passing through it: the last step of each it
//! accepted (a retried message whose first copy arrived must not run twice), and the
//! requests that have finished (late steps of them are refused).

use std::collections::{HashMap, HashSet, VecDeque};

/// The last step of each request this node accepted, bounded (the oldest requests are
/// forgotten first).
#[derive(Default)]
pub struct StepLedger {
    last: HashMap<String, u64>,
    order: VecDeque<String>,
}

impl StepLedger {
    const CAPACITY: usize = 4096;

    /// Whether `step` of `request_id` is new here (and records it).
    pub fn accept(&mut self, request_id: &str, step: u64) -> bool {
        match self.last.get_mut(request_id) {
            Some(last) if *last >= step => false,
            Some(last) => {
                *last = step;
                true
            }
            None => {
                if self.order.len() == Self::CAPACITY
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.last.remove(&oldest);
                }
                self.order.push_back(request_id.to_string());
                self.last.insert(request_id.to_string(), step);
                true
            }
        }
    }

    /// Whether a step of `request_id` was accepted here before.
    pub fn knows(&self, request_id: &str) -> bool {
        self.last.contains_key(request_id)
    }

    pub fn forget(&mut self, request_id: &str) {
        self.last.remove(request_id);
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
