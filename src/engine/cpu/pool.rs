//! The CPU kernels' worker threads.
//!
//! A forward pass makes hundreds of short parallel calls (one per matmul), so a call must
//! cost microseconds: workers spin a little after each call before they sleep, and the
//! caller takes a share of the work itself. Waiting never spins blindly: a worker that
//! lost its core to the caller (or to another process — three nodes often share a
//! machine) gets it back because the waiting caller yields. candle's pool spins without
//! yielding, which on a busy machine can stall a call for a whole scheduler time slice.
//!
//! Threads: `EXO_THREADS`, else `CANDLE_NUM_THREADS`, else the CPUs this process may run
//! on.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const WORKER_SPIN: Duration = Duration::from_micros(200);
/// How long a waiting caller spins before it starts yielding its core.
const CALLER_SPIN: Duration = Duration::from_micros(20);

thread_local! {
    /// Set on pool workers (and on a caller during its call): a nested call runs inline.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// A call's work: `f(worker)` for worker in 0..=workers (the caller is the last).
type Task = *const (dyn Fn(usize) + Sync);

struct Shared {
    generation: AtomicUsize,
    task: UnsafeCell<Option<Task>>,
    /// Workers still running the current call.
    running: AtomicUsize,
    /// Per worker: whether it is parked (worth an unpark).
    sleeping: Vec<AtomicBool>,
    stop: AtomicBool,
    panicked: AtomicBool,
}

// SAFETY: `task` is written by the caller only while every worker is idle (under the call
// lock, before the generation is bumped) and read by workers only after they see the new
// generation, until they report done.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// The pool.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    _handles: Vec<JoinHandle<()>>,
    call: Mutex<()>,
}

impl Pool {
    fn new(threads: usize) -> Self {
        let workers = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            task: UnsafeCell::new(None),
            running: AtomicUsize::new(0),
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let handles: Vec<JoinHandle<()>> = (0..workers)
            .map(|id| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("exo-cpu-{id}"))
                    .spawn(move || worker(id, &shared))
                    .expect("a CPU worker thread starts")
            })
            .collect();
        Pool {
            threads: handles.iter().map(|h| h.thread().clone()).collect(),
            _handles: handles,
            shared,
            call: Mutex::new(()),
        }
    }

    /// Threads that work on a call (the workers and the caller).
    pub fn threads(&self) -> usize {
        self.threads.len() + 1
    }

    /// Runs `f(i)` once for every i in 0..threads(), in parallel; returns when all are done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let n = self.threads.len();
        if n == 0 || IN_POOL.with(|p| p.get()) {
            for i in 0..=n {
                f(i);
            }
            return;
        }
        let _call = self.call.lock().unwrap_or_else(|p| p.into_inner());
        let shared = &*self.shared;
        // SAFETY: every worker is idle (the previous call waited for all of them), so
        // nobody reads `task` now. The pointer lives until this call returns, and every
        // worker is done with it before then.
        unsafe {
            let task: Task = std::mem::transmute::<&(dyn Fn(usize) + Sync), Task>(f);
            *shared.task.get() = Some(task);
        }
        shared.running.store(n, Ordering::Relaxed);
        // SeqCst here and in the worker's sleep: each side sees the other's write (a
        // worker going to sleep either sees this call or is woken by it).
        shared.generation.fetch_add(1, Ordering::SeqCst);
        for (thread, sleeping) in self.threads.iter().zip(&shared.sleeping) {
            if sleeping.load(Ordering::SeqCst) {
                thread.unpark();
            }
        }
        IN_POOL.with(|p| p.set(true));
        f(n);
        IN_POOL.with(|p| p.set(false));
        let started = Instant::now();
        while shared.running.load(Ordering::Acquire) != 0 {
            if started.elapsed() < CALLER_SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a CPU worker thread panicked");
        }
    }

    /// Runs `f` over `0..items` in chunks taken from a shared cursor (fast threads absorb
    /// a slow one's share), each item exactly once.
    pub fn chunked(&self, items: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        if items == 0 {
            return;
        }
        let chunk = items.div_ceil(self.threads() * 8).max(1);
        let cursor = AtomicUsize::new(0);
        self.run(&|_| {
            loop {
                let start = cursor.fetch_add(chunk, Ordering::Relaxed);
                if start >= items {
                    break;
                }
                f(start..items.min(start + chunk));
            }
        });
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for thread in &self.threads {
            thread.unpark();
        }
    }
}

fn worker(id: usize, shared: &Shared) {
    IN_POOL.with(|p| p.set(true));
    // The generation the pool started with: a call made before this thread got going
    // must still be seen as new.
    let mut seen = 0;
    loop {
        // Wait for the next call: spin a little, then sleep.
        let started = Instant::now();
        loop {
            let now = shared.generation.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                break;
            }
            if started.elapsed() < WORKER_SPIN {
                std::hint::spin_loop();
            } else {
                shared.sleeping[id].store(true, Ordering::SeqCst);
                // Re-check after announcing sleep: a call that started in between has
                // either seen the flag (and will unpark) or bumped the generation.
                if shared.generation.load(Ordering::SeqCst) == seen {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                shared.sleeping[id].store(false, Ordering::Release);
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the caller set `task` before bumping the generation and keeps it alive
        // until `running` reaches zero.
        let task = unsafe { *shared.task.get() };
        if let Some(task) = task {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*task)(id) }));
            if result.is_err() {
                shared.panicked.store(true, Ordering::Release);
            }
        }
        shared.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The process's pool.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(configured_threads()))
}

/// Threads the kernels use.
pub fn configured_threads() -> usize {
    ["EXO_THREADS", "CANDLE_NUM_THREADS"]
        .iter()
        .find_map(|name| {
            std::env::var(name)
                .ok()?
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once_across_many_calls() {
        let pool = Pool::new(3);
        for items in [0, 1, 5, 97, 1000] {
            let counts: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
            pool.chunked(items, &|range| {
                for i in range {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn a_nested_call_runs_inline() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        pool.chunked(4, &|range| {
            for _ in range {
                pool.chunked(3, &|inner| {
                    total.fetch_add(inner.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }
}
