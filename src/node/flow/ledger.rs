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
