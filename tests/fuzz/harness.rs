//! Runs one fuzz target: a proptest strategy and a property, for a number of cases or a
//! time budget, and reports how many cases ran.

use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// Cases per round (and per target in a plain `cargo test`).
fn cases() -> u32 {
    std::env::var("EXO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// With `EXO_FUZZ_SECONDS`, rounds of fresh random cases run until the budget is spent.
fn budget() -> Option<Duration> {
    std::env::var("EXO_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
}

/// Runs `property` on values of `strategy`; panics (failing the test) with the shrunk
/// input when a case fails or panics. Prints `fuzz <name>: <n> cases, 0 failures` on
/// success, which scripts/fuzz.sh collects.
pub fn fuzz<S>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let budget = budget();
    let mut total: u64 = 0;
    loop {
        let config = Config {
            cases: cases(),
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let ran = std::cell::Cell::new(0u64);
        let result = runner.run(&strategy, |value| {
            ran.set(ran.get() + 1);
            property(value)
        });
        match result {
            Ok(()) => total += ran.get(),
            Err(TestError::Fail(reason, value)) => {
                panic!(
                    "fuzz {name}: failed after {total} cases: {reason}\nminimal input: {value:#?}"
                )
            }
            Err(TestError::Abort(reason)) => panic!("fuzz {name}: aborted: {reason}"),
        }
        match budget {
            Some(budget) if started.elapsed() < budget => continue,
            _ => break,
        }
    }
    println!(
        "fuzz {name}: {total} cases, 0 failures, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A structure-aware mutation of a valid input's bytes.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR one byte (position taken modulo the length).
    Flip(usize, u8),
    /// Set one byte.
    Set(usize, u8),
    /// Cut the input at a position.
    Truncate(usize),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Remove a run of bytes.
    Remove(usize, usize),
    /// Copy a run of the input over another place (splices fields into each other).
    Splice(usize, usize, usize),
    /// Overwrite 8 bytes with an edge-case little-endian integer (lengths, counts).
    Integer(usize, u64),
}

/// Edge-case integers: what breaks length and count checks.
pub fn edge_u64() -> impl Strategy<Value = u64> {
    proptest::prop_oneof![
        proptest::sample::select(vec![
            0,
            1,
            2,
            7,
            8,
            31,
            32,
            255,
            256,
            u64::from(u16::MAX),
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            1 << 40,
            i64::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ]),
        proptest::num::u64::ANY,
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    use proptest::prelude::*;
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1..64usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<usize>(), any::<usize>(), 1..64usize)
            .prop_map(|(from, to, n)| Mutation::Splice(from, to, n)),
        (any::<usize>(), edge_u64()).prop_map(|(i, v)| Mutation::Integer(i, v)),
    ]
}

/// Up to `max` mutations in a row.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..=max)
}

/// Applies mutations to a copy of `bytes`.
pub fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let len = out.len();
        match m {
            Mutation::Flip(i, x) if len > 0 => out[i % len] ^= x,
            Mutation::Set(i, b) if len > 0 => out[i % len] = *b,
            Mutation::Truncate(i) => out.truncate(i % (len + 1)),
            Mutation::Insert(i, b) => {
                let at = i % (len + 1);
                out.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let at = i % len;
                out.drain(at..(at + n).min(len));
            }
            Mutation::Splice(from, to, n) if len > 0 => {
                let from = from % len;
                let n = (*n).min(len - from);
                let piece = out[from..from + n].to_vec();
                let to = to % len;
                let end = (to + n).min(len);
                out[to..end].copy_from_slice(&piece[..end - to]);
            }
            Mutation::Integer(i, v) if len >= 8 => {
                let at = i % (len - 7);
                out[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    out
}

/// Runs a future to completion on a fresh single-threaded runtime (one per case: cases
/// stay independent, and a panic inside is caught by proptest like any other).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

/// What a header reader that asks for more bytes must ask: more than it has, and no more
/// than the file holds.
pub fn check_need_more(needs: u64, have: usize, size: u64) -> Result<(), TestCaseError> {
    proptest::prop_assert!(
        needs > have as u64 && needs <= size,
        "needs {} with {} of {}",
        needs,
        have,
        size
    );
    Ok(())
}
