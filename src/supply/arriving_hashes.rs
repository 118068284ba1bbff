//! Tensors hashed as their bytes arrive from a peer, on a thread of their own: checking a
//! transfer then needs no second read of the file, and the hashing overlaps the receive
//! instead of following it.
//!
//! Only tensors whose every byte comes in this transfer are given here. Chunks come in
//! ascending order, so each of them sees its bytes in order; one that does not (a gap, or
//! bytes that skip its start) gets no hash, and the caller reads it back from disk and
//! hashes it there, as for a tensor that was partly here before.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::catalog::layout::TensorSpan;
use crate::catalog::sparse_store::hex;

/// Chunks queued for the hashing thread (1 MiB each): enough to ride out a slow moment of
/// either side without holding much memory.
const QUEUE_CHUNKS: usize = 16;

/// A hashing thread fed with the bytes of a transfer.
pub struct ArrivingHashes {
    sender: SyncSender<(u64, Bytes)>,
    thread: JoinHandle<HashMap<String, String>>,
}

impl ArrivingHashes {
    /// Starts hashing `tensors` (disjoint; any order).
    pub fn start(mut tensors: Vec<TensorSpan>) -> Self {
        tensors.sort_by_key(|t| t.start);
        let (sender, receiver) = sync_channel(QUEUE_CHUNKS);
        let thread = std::thread::Builder::new()
            .name("exo-tensor-hash".into())
            .spawn(move || hash_in_order(&tensors, receiver))
            .expect("cannot start the tensor hashing thread");
        ArrivingHashes { sender, thread }
    }

    /// Hands the thread the bytes that arrived at `offset` of the file (a cheap clone of
    /// the received buffer, not a copy).
    pub fn feed(&self, offset: u64, bytes: Bytes) {
        // The thread only stops when the sender is dropped.
        let _ = self.sender.send((offset, bytes));
    }

    /// The sha256 (hex) of every tensor whose bytes all arrived, in order, by name.
    pub fn finish(self) -> HashMap<String, String> {
        drop(self.sender);
        self.thread.join().unwrap_or_default()
    }
}

/// The hashing thread: follows the chunks through the sorted `tensors`.
fn hash_in_order(
    tensors: &[TensorSpan],
    chunks: Receiver<(u64, Bytes)>,
) -> HashMap<String, String> {
    let mut hashes = HashMap::new();
    // Tensors before `next` are hashed or given up.
    let mut next = 0;
    // The tensor `next` while part of it is hashed: its hasher and the byte it needs next.
    let mut open: Option<(Sha256, u64)> = None;
    for (offset, bytes) in chunks {
        let end = offset + bytes.len() as u64;
        let mut at = offset;
        while at < end && next < tensors.len() {
            let tensor = &tensors[next];
            if tensor.end <= at {
                // Ends before these bytes: finished, or its last bytes never came.
                next += 1;
                open = None;
                continue;
            }
            if tensor.start >= end {
                break;
            }
            at = at.max(tensor.start);
            let mut hasher = match open.take() {
                Some((hasher, needed)) if needed == at => hasher,
                _ if at == tensor.start => Sha256::new(),
                _ => {
                    // Bytes of this tensor went by unseen: no hash for it.
                    next += 1;
                    continue;
                }
            };
            let stop = end.min(tensor.end);
            hasher.update(&bytes[(at - offset) as usize..(stop - offset) as usize]);
            at = stop;
            if stop == tensor.end {
                hashes.insert(tensor.name.clone(), hex(&hasher.finalize()));
                next += 1;
            } else {
                open = Some((hasher, stop));
            }
        }
    }
    hashes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, start: u64, end: u64) -> TensorSpan {
        TensorSpan {
            name: name.into(),
            start,
            end,
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// A file of 100 bytes, tensors at 10..40, 40..45 and 60..100, sent in chunks of
    /// `chunk` bytes over the ranges given.
    fn run(ranges: &[(u64, u64)], chunk: u64) -> HashMap<String, String> {
        let file: Vec<u8> = (0..100u8).map(|b| b.wrapping_mul(37)).collect();
        let hashes = ArrivingHashes::start(vec![
            span("c", 60, 100),
            span("a", 10, 40),
            span("b", 40, 45),
        ]);
        for &(start, end) in ranges {
            let mut at = start;
            while at < end {
                let stop = end.min(at + chunk);
                let bytes = Bytes::copy_from_slice(&file[at as usize..stop as usize]);
                hashes.feed(at, bytes);
                at = stop;
            }
        }
        hashes.finish()
    }

    #[test]
    fn every_tensor_is_hashed_whatever_the_chunking() {
        let file: Vec<u8> = (0..100u8).map(|b| b.wrapping_mul(37)).collect();
        for chunk in [1, 3, 7, 16, 100] {
            let hashes = run(&[(0, 100)], chunk);
            assert_eq!(hashes.len(), 3, "chunk {chunk}");
            assert_eq!(hashes["a"], sha(&file[10..40]), "chunk {chunk}");
            assert_eq!(hashes["b"], sha(&file[40..45]), "chunk {chunk}");
            assert_eq!(hashes["c"], sha(&file[60..100]), "chunk {chunk}");
        }
    }

    #[test]
    fn a_tensor_with_bytes_missing_gets_no_hash() {
        let file: Vec<u8> = (0..100u8).map(|b| b.wrapping_mul(37)).collect();
        // "a" lacks 20..25, "c" lacks its start: only "b" is whole.
        let hashes = run(&[(10, 20), (25, 45), (61, 100)], 4);
        assert_eq!(hashes.len(), 1, "{hashes:?}");
        assert_eq!(hashes["b"], sha(&file[40..45]));
        // Only the ranges of the tensors, as a transfer asks for them.
        let hashes = run(&[(10, 45), (60, 100)], 8);
        assert_eq!(hashes.len(), 3);
        // "c" cut short.
        let hashes = run(&[(10, 45), (60, 99)], 8);
        assert!(!hashes.contains_key("c"));
    }
}
