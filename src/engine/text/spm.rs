//! SentencePiece-style tokenization of one stretch of text, as llama.cpp does it for GGUF
//! vocabularies of type "llama" (Gemma, Mistral, Phi-3, the first Llamas).
//!
//! Such a vocabulary has no merge list: every token has a score, and the tokenizer starts
//! from the text's characters and keeps merging the adjacent pair whose concatenation is a
//! token with the highest score. What cannot be spelled with tokens falls back to byte
//! tokens (`<0x41>`). The caller has already turned spaces into "▁" and split special
//! tokens out; this file only does the merging.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// What the merging needs from a vocabulary.
pub struct SpmVocab<'a> {
    /// Token text to id.
    pub ids: &'a HashMap<String, u32>,
    /// Score of each token, by id: the higher, the earlier a pair merges into it.
    pub scores: &'a [f32],
    /// The token standing for each byte, for characters no token spells.
    pub byte_ids: &'a [Option<u32>; 256],
}

/// A run of the text: a character at first, then whatever merged into it. Symbols form a
/// linked list in text order; a symbol merged into its left neighbour is left empty.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols.
struct Pair {
    left: usize,
    right: usize,
    score: f32,
    /// Byte length of the merged text, to recognise a pair made stale by another merge.
    len: usize,
}

/// The heap's order: the highest score first, and among equal scores the leftmost pair
/// (llama.cpp's order, which decides between equally scored merges).
impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        // `partial_cmp`, not `total_cmp`: llama.cpp compares with `<`, so -0.0 == 0.0.
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

impl SpmVocab<'_> {
    /// Appends the ids of `text` (spaces already escaped as "▁") to `out`.
    ///
    /// Fails only when a character has no token and the vocabulary lacks the byte tokens
    /// to spell it.
    pub fn tokenize(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
        let mut symbols: Vec<Symbol> = Vec::new();
        for (start, c) in text.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: None,
            });
            if let Some(prev) = index.checked_sub(1) {
                symbols[prev].next = Some(index);
            }
        }
        if symbols.is_empty() {
            return Ok(());
        }

        let mut queue = BinaryHeap::new();
        for left in 1..symbols.len() {
            self.push_pair(text, &symbols, left - 1, left, &mut queue);
        }
        while let Some(pair) = queue.pop() {
            let (left, right) = (&symbols[pair.left], &symbols[pair.right]);
            // Skip pairs that an earlier merge consumed: one side is gone, or one side has
            // grown since the pair was queued.
            if left.len == 0 || right.len == 0 || left.len + right.len != pair.len {
                continue;
            }
            let right_next = right.next;
            symbols[pair.left].len += symbols[pair.right].len;
            symbols[pair.right].len = 0;
            symbols[pair.left].next = right_next;
            if let Some(next) = right_next {
                symbols[next].prev = Some(pair.left);
            }
            if let Some(prev) = symbols[pair.left].prev {
                self.push_pair(text, &symbols, prev, pair.left, &mut queue);
            }
            if let Some(next) = right_next {
                self.push_pair(text, &symbols, pair.left, next, &mut queue);
            }
        }

        // Every merged symbol spells a token (only such pairs were queued); a single
        // character that is no token is written as its bytes.
        let mut index = Some(0);
        while let Some(i) = index {
            let symbol = &symbols[i];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        match self.byte_ids[usize::from(byte)] {
                            Some(id) => out.push(id),
                            None => anyhow::bail!(
                                "the vocabulary has no token for {piece:?} and no byte token \
                                 <0x{byte:02X}> to spell it with"
                            ),
                        }
                    }
                }
            }
            index = symbol.next;
        }
        Ok(())
    }

    /// Queues the merge of two adjacent symbols when their text together is a token.
    fn push_pair(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Pair>,
    ) {
        let start = symbols[left].start;
        let len = symbols[left].len + symbols[right].len;
        if let Some(&id) = self.ids.get(&text[start..start + len]) {
            queue.push(Pair {
                left,
                right,
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                len,
            });
        }
    }
}
