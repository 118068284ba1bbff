//! How long the origin waits for a step before it checks on the ring.
//!
//! A step's deadline is there to notice a node that died or hung, not to bound how long
//! a busy ring may take: under load a request's step waits in the shards' batches behind
//! other requests' prompt chunks, for longer than any fixed timeout. So a deadline that
//! passes fails nothing by itself: the origin health-checks the plan's nodes, plans again
//! without those that do not answer, and waits on when every node answers (up to a hard
//! cap, for a ring that answers but never serves the request).
//!
//! That makes a short deadline cheap, and a short one notices a hung node soon. It
//! follows what this request's steps have taken: a multiple of their recent 90th
//! percentile (token to token, every hop included), never under the configured floor.

use std::collections::VecDeque;
use std::time::Duration;

/// How many recent steps the percentile is taken over.
const WINDOW: usize = 32;
/// The deadline as a multiple of the recent 90th percentile.
const MULTIPLE: u32 = 4;

/// The recent step times of one request.
#[derive(Debug, Default)]
pub struct StepTimes {
    recent: VecDeque<Duration>,
}

impl StepTimes {
    /// A decoding step took `latency` from sending its token to receiving the next.
    pub fn record(&mut self, latency: Duration) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(latency);
    }

    /// The 90th percentile of the recent steps (none yet: zero).
    pub fn high(&self) -> Duration {
        if self.recent.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort();
        sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)]
    }

    /// How long to wait for a step before checking the plan's nodes.
    pub fn patience(&self, floor: Duration) -> Duration {
        floor.max(self.high() * MULTIPLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_holds_until_steps_are_slow() {
        let mut times = StepTimes::default();
        let floor = Duration::from_millis(250);
        assert_eq!(times.patience(floor), floor);
        for _ in 0..10 {
            times.record(Duration::from_millis(20));
        }
        assert_eq!(times.patience(floor), floor);
        for _ in 0..10 {
            times.record(Duration::from_millis(200));
        }
        assert_eq!(times.patience(floor), Duration::from_millis(800));
    }

    #[test]
    fn one_slow_step_in_many_does_not_move_the_percentile_and_old_steps_are_forgotten() {
        let mut times = StepTimes::default();
        times.record(Duration::from_secs(3));
        for _ in 0..20 {
            times.record(Duration::from_millis(10));
        }
        assert_eq!(times.high(), Duration::from_millis(10));
        for _ in 0..WINDOW {
            times.record(Duration::from_millis(50));
        }
        assert_eq!(times.high(), Duration::from_millis(50));
    }
}
