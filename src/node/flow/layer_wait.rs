//! Steps that arrive before this node has the weights of their layers (a node that joined
//! with nothing, or was given a new range). The first such step of a layer range starts
//! the one fetch of that range; every later step of the range (the next prompt chunks of
//! the same request, other requests' steps) queues behind it in the order it arrived, and
//! all go to the batcher in that order when the fetch ends.
//!
//! Each step used to start its own wait for the weights, and which waiter went first was
//! up to the scheduler (tasks spawned in one poll run newest first): a request's second
//! prompt chunk could reach the engine before its first, fail on its position and cost the
//! request a re-plan. A step that arrives after the weights came but while earlier steps
//! of its range still wait queues behind them too, so arrival order is the only order.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

/// The steps waiting for each layer range's fetch, in arrival order. `J` is what the
/// batcher is handed (the flow keeps the model and the step job).
pub(super) struct LayerWaits<J> {
    waiting: Mutex<HashMap<(usize, usize), Vec<J>>>,
}

impl<J> Default for LayerWaits<J> {
    fn default() -> Self {
        LayerWaits {
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<J> LayerWaits<J> {
    /// Hands `job` to `submit` now when the layers are here (`layers_here`) and no earlier
    /// step of the range waits; queues it otherwise. Returns true when this step is the
    /// first to wait for `layers`: the caller starts the fetch and calls
    /// [`LayerWaits::fetch_ended`] when it ends.
    pub(super) fn submit_or_wait(
        &self,
        layers: &Range<usize>,
        layers_here: impl FnOnce() -> bool,
        job: J,
        submit: impl FnOnce(J),
    ) -> bool {
        let mut waiting = self.lock();
        if let Some(queue) = waiting.get_mut(&key(layers)) {
            queue.push(job);
            return false;
        }
        if layers_here() {
            // Under the lock, so that a release running now cannot overtake it.
            submit(job);
            return false;
        }
        waiting.insert(key(layers), vec![job]);
        true
    }

    /// The fetch of `layers` ended. When it succeeded, the waiting steps go to `submit`
    /// in the order they arrived (under the lock, so a step arriving meanwhile queues
    /// behind them); when it failed, they are handed back for the caller to fail.
    pub(super) fn fetch_ended(
        &self,
        layers: &Range<usize>,
        succeeded: bool,
        mut submit: impl FnMut(J),
    ) -> Vec<J> {
        let mut waiting = self.lock();
        let queue = waiting.remove(&key(layers)).unwrap_or_default();
        if !succeeded {
            return queue;
        }
        for job in queue {
            submit(job);
        }
        Vec::new()
    }

    /// Steps waiting for a fetch now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, usize), Vec<J>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(layers: &Range<usize>) -> (usize, usize) {
    (layers.start, layers.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn steps_behind_a_fetch_reach_the_batcher_in_arrival_order() {
        let waits = LayerWaits::default();
        let batcher = RefCell::new(Vec::new());
        let submit = |job: u32| batcher.borrow_mut().push(job);
        // Chunk 0 finds the layers missing and starts the fetch; chunks 1 and 2 queue.
        assert!(waits.submit_or_wait(&(0..4), || false, 0, submit));
        assert!(!waits.submit_or_wait(&(0..4), || false, 1, submit));
        // The weights are on disk now, but the fetch has not handed its steps over yet:
        // chunk 2 must not overtake chunks 0 and 1.
        assert!(!waits.submit_or_wait(&(0..4), || true, 2, submit));
        assert!(batcher.borrow().is_empty());
        assert_eq!(waits.waiting(), 3);
        assert!(waits.fetch_ended(&(0..4), true, submit).is_empty());
        // Once the queue is gone, a step goes straight to the batcher.
        assert!(!waits.submit_or_wait(&(0..4), || true, 3, submit));
        assert_eq!(*batcher.borrow(), vec![0, 1, 2, 3]);
        assert_eq!(waits.waiting(), 0);
    }

    #[test]
    fn a_failed_fetch_hands_its_steps_back_and_other_ranges_do_not_wait_for_it() {
        let waits = LayerWaits::default();
        let batcher = RefCell::new(Vec::new());
        let submit = |job: u32| batcher.borrow_mut().push(job);
        assert!(waits.submit_or_wait(&(0..4), || false, 10, submit));
        assert!(!waits.submit_or_wait(&(0..4), || false, 11, submit));
        // Another range whose layers are here is not held by this fetch.
        assert!(!waits.submit_or_wait(&(4..8), || true, 20, submit));
        assert_eq!(*batcher.borrow(), vec![20]);
        assert_eq!(waits.fetch_ended(&(0..4), false, submit), vec![10, 11]);
        assert_eq!(*batcher.borrow(), vec![20]);
        // The next step of the failed range starts a fetch of its own.
        assert!(waits.submit_or_wait(&(0..4), || false, 12, submit));
    }
}
