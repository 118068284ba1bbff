//! When the ring last did work that this node saw.
//!
//! A step's deadline is there to notice a ring that stopped answering, not to bound how
//! long a busy ring may take: under load a request's step waits in the shards' batches
//! behind other requests' prompt chunks, for longer than any fixed per-step timeout. So
//! the origin re-arms a step's deadline while the ring is visibly working — results
//! arriving here for any request, or this node's own engine finishing batches — and
//! fails the step only after a whole deadline without any progress (or past a hard cap).
//!
//! Progress is seen at the granularity of a batch, and one batch of a busy shard (a long
//! prompt chunk beside many decoding steps, on a big model or a slow machine) can itself
//! last longer than the configured step timeout. So the clock also remembers how long a
//! step recently took on this node, from queueing to result, and the deadline grows with
//! it: the other shards of the ring run similar work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A clock of the last progress, shared by the shard and origin sides of a flow.
pub struct ProgressClock {
    base: Instant,
    /// Microseconds after `base` of the latest progress (0: none yet).
    last_micros: AtomicU64,
    /// A slowly decaying maximum of the recent step latencies here, in microseconds.
    slow_step_micros: AtomicU64,
}

impl Default for ProgressClock {
    fn default() -> Self {
        ProgressClock {
            base: Instant::now(),
            last_micros: AtomicU64::new(0),
            slow_step_micros: AtomicU64::new(0),
        }
    }
}

impl ProgressClock {
    /// Something moved: a result arrived or a batch finished.
    pub fn mark(&self) {
        let micros = self.base.elapsed().as_micros().max(1) as u64;
        self.last_micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// A step of this node's engine took `latency` from its queueing to its result.
    pub fn step_took(&self, latency: Duration) {
        let micros = latency.as_micros() as u64;
        // Each step lets the remembered maximum decay by 1/64, so a burst of slow batches
        // is forgotten after a few hundred quick steps.
        let _ = self
            .slow_step_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(micros.max(old - old / 64))
            });
    }

    /// How long a step may go without progress on a ring of `shards` nodes: the
    /// configured `floor`, or twice the recent slow step of this node for each shard.
    pub fn patience(&self, floor: Duration, shards: usize) -> Duration {
        let slow = Duration::from_micros(self.slow_step_micros.load(Ordering::Relaxed));
        floor.max(slow * 2 * shards.max(1) as u32)
    }

    /// The time of the latest progress, if any.
    pub fn last(&self) -> Option<Instant> {
        match self.last_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(self.base + Duration::from_micros(micros)),
        }
    }

    /// When a wait armed at `armed` with `deadline` should give up: `deadline` after the
    /// later of `armed` and the last progress, but never past `armed + cap`.
    pub fn expiry(&self, armed: Instant, deadline: Duration, cap: Duration) -> Instant {
        let from = self.last().map_or(armed, |last| last.max(armed));
        (from + deadline).min(armed + cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_moves_the_expiry_but_not_past_the_cap() {
        let clock = ProgressClock::default();
        let armed = Instant::now();
        let deadline = Duration::from_secs(4);
        let cap = Duration::from_secs(60);
        assert_eq!(clock.expiry(armed, deadline, cap), armed + deadline);
        clock.mark();
        let last = clock.last().unwrap();
        assert_eq!(
            clock.expiry(armed, deadline, cap),
            last.max(armed) + deadline
        );
        assert_eq!(
            clock.expiry(armed, deadline, Duration::from_secs(1)),
            armed + Duration::from_secs(1)
        );
    }

    #[test]
    fn patience_grows_with_slow_steps_and_decays() {
        let clock = ProgressClock::default();
        let floor = Duration::from_secs(4);
        assert_eq!(clock.patience(floor, 3), floor);
        clock.step_took(Duration::from_secs(5));
        assert_eq!(clock.patience(floor, 3), Duration::from_secs(30));
        for _ in 0..400 {
            clock.step_took(Duration::from_millis(10));
        }
        assert_eq!(clock.patience(floor, 3), floor);
    }

    #[test]
    fn progress_before_the_wait_began_does_not_shorten_it() {
        let clock = ProgressClock::default();
        clock.mark();
        let armed = clock.last().unwrap() + Duration::from_secs(10);
        assert_eq!(
            clock.expiry(armed, Duration::from_secs(4), Duration::from_secs(60)),
            armed + Duration::from_secs(4)
        );
    }
}
