//! Faults on demand, for tests and `scripts/chaos.sh` (DESIGN.md §4d).
//!
//! A node started with `--enable-fault-injection` (or a test's `NodeConfig::faults`)
//! holds one [`Faults`]: switches the engine and the flow read at the points where real
//! faults strike. `POST /v1/admin/faults` sets them (an admin endpoint that answers 404 on
//! a node started without the flag), so that a test or a chaos run can break a running
//! node the way a failing GPU or a one-way network cut would, and mend it again:
//!
//! - `fail_engine`: the engine's health check fails and the steps it is given never
//!   finish (a hung device); mended (`false`), the steps it held fail, as a device reset
//!   fails the work it had, and their origins plan again;
//! - `drop_results`: the next N results this node sends to other nodes' requests are lost
//!   on the way (the link back to their origins is cut one way; steps still flow; 0 mends
//!   it, a large N cuts it for good);
//! - `panic_batch`: the engine's next batch panics (once).
//!
//! A node without the flag has no `Faults` at all, so nothing here can be switched on in
//! normal use.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The faults a node injects now, and how often each struck.
#[derive(Debug, Default)]
pub struct Faults {
    fail_engine: AtomicBool,
    drop_results: AtomicU64,
    panic_batch: AtomicBool,
    results_dropped: AtomicU64,
    steps_held: AtomicU64,
    held: HeldSteps,
}

/// What fails each step a failed engine holds, once the engine is mended.
#[derive(Default)]
struct HeldSteps(Mutex<Vec<Box<dyn FnOnce() + Send>>>);

impl std::fmt::Debug for HeldSteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map_or(0, |held| held.len());
        write!(f, "HeldSteps({held})")
    }
}

/// The switches as the admin endpoint takes them: each field present sets that switch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    pub fail_engine: Option<bool>,
    pub drop_results: Option<u64>,
    pub panic_batch: Option<bool>,
}

/// The switches and counts, as the admin endpoint reports them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FaultReport {
    pub fail_engine: bool,
    /// Results still to be lost.
    pub drop_results: u64,
    pub panic_batch: bool,
    /// Results lost to `drop_results` so far.
    pub results_dropped: u64,
    /// Steps a failed engine was given (held until it is mended, then failed).
    pub steps_held: u64,
}

impl Faults {
    /// Sets the switches `settings` names; the others stay as they are.
    pub fn apply(&self, settings: &FaultSettings) {
        if let Some(on) = settings.fail_engine {
            self.fail_engine.store(on, Ordering::SeqCst);
            if !on {
                let held =
                    std::mem::take(&mut *self.held.0.lock().unwrap_or_else(|p| p.into_inner()));
                for fail in held {
                    fail();
                }
            }
        }
        if let Some(count) = settings.drop_results {
            self.drop_results.store(count, Ordering::SeqCst);
        }
        if let Some(on) = settings.panic_batch {
            self.panic_batch.store(on, Ordering::SeqCst);
        }
        tracing::warn!("fault injection: {:?}", self.report());
    }

    pub fn report(&self) -> FaultReport {
        FaultReport {
            fail_engine: self.engine_failed(),
            drop_results: self.drop_results.load(Ordering::SeqCst),
            panic_batch: self.panic_batch.load(Ordering::SeqCst),
            results_dropped: self.results_dropped.load(Ordering::SeqCst),
            steps_held: self.steps_held.load(Ordering::SeqCst),
        }
    }

    /// Whether the engine is to fail now.
    pub fn engine_failed(&self) -> bool {
        self.fail_engine.load(Ordering::SeqCst)
    }

    /// A failed engine was given a step, which it holds until it is mended; then `fail`
    /// fails it.
    pub fn hold_step(&self, fail: Box<dyn FnOnce() + Send>) {
        self.steps_held.fetch_add(1, Ordering::SeqCst);
        self.held
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fail);
    }

    /// Whether a result bound for another node is lost now (counted when it is).
    pub fn drops_result(&self) -> bool {
        let drop = self
            .drop_results
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if drop {
            self.results_dropped.fetch_add(1, Ordering::SeqCst);
        }
        drop
    }

    /// Whether the batch starting now is to panic (the switch turns itself off).
    pub fn take_batch_panic(&self) -> bool {
        self.panic_batch.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_set_only_what_they_name_and_a_batch_panic_strikes_once() {
        let faults = Faults::default();
        faults.apply(&FaultSettings {
            drop_results: Some(2),
            panic_batch: Some(true),
            ..FaultSettings::default()
        });
        assert!(faults.drops_result());
        assert!(faults.drops_result());
        assert!(!faults.drops_result());
        assert!(!faults.engine_failed());
        assert!(faults.take_batch_panic());
        assert!(!faults.take_batch_panic());
        faults.apply(&FaultSettings {
            drop_results: Some(5),
            ..FaultSettings::default()
        });
        faults.apply(&FaultSettings {
            drop_results: Some(0),
            ..FaultSettings::default()
        });
        assert!(!faults.drops_result());
        assert_eq!(faults.report().results_dropped, 2);
        let refused: Result<FaultSettings, _> = serde_json::from_str(r#"{"fail_gpu": true}"#);
        assert!(refused.is_err());
    }
}
