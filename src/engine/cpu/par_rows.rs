//! Row-wise operations spread over the workers when a batch is big enough to pay for it.
//!
//! Norms, activations and residual adds are cheap per value, but a 512-token prompt holds
//! millions of values: run on the calling thread alone they leave the other cores idle
//! between two matmuls. Each row is still computed by the same code, so the results do
//! not depend on how the rows were shared out.

use super::pool::pool;

/// Below this many values an operation runs on the calling thread (waking the workers
/// costs microseconds).
const PARALLEL_FROM: usize = 1 << 15;

/// A buffer the workers fill, each whole rows of its own.
struct Shared<T>(*mut T);
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}
// SAFETY: the workers write disjoint rows, and the buffer outlives the pool call.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

/// Calls `f(first_row, rows)` on pieces of `out` made of whole rows of `cols` values,
/// covering it exactly once: on the workers when `out` is big, else in one call here.
pub fn for_rows<T: Send>(out: &mut [T], cols: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = out.len().checked_div(cols).unwrap_or(0);
    if out.len() < PARALLEL_FROM || rows < 2 {
        f(0, out);
        return;
    }
    let base = Shared(out.as_mut_ptr());
    pool().chunked(rows, &|range| {
        // SAFETY: chunks are disjoint row ranges of `out`, which outlives the call.
        let part = unsafe {
            std::slice::from_raw_parts_mut(base.at(range.start * cols), range.len() * cols)
        };
        f(range.start, part);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_visited_once_with_its_index() {
        for rows in [1, 3, 200] {
            let cols = 512;
            let mut out = vec![0u32; rows * cols];
            for_rows(&mut out, cols, |first, part| {
                for (i, row) in part.chunks_exact_mut(cols).enumerate() {
                    for v in row {
                        *v += (first + i) as u32 + 1;
                    }
                }
            });
            for (r, row) in out.chunks_exact(cols).enumerate() {
                assert!(row.iter().all(|&v| v == r as u32 + 1), "row {r}");
            }
        }
    }
}
