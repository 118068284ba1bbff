//! Attention on the CPU over per-sequence key/value caches.
//!
//! Every query row is computed on its own, by the same code whether it comes from a long
//! prompt or a single decoded token: its keys and values are written to the cache first,
//! then it attends to cached positions only, in order. So a position's output is the same
//! bit for bit whether it was decoded one token at a time or re-run as part of a prompt.
//! Keys and values are kept in f16 (half the memory of f32, as llama.cpp does).

use half::f16;

use super::ops::exp;

/// One layer's keys and values for one sequence, token-major: `[token][kv_head][head_dim]`.
#[derive(Default)]
pub struct KvLayer {
    keys: Vec<f16>,
    values: Vec<f16>,
}

impl KvLayer {
    /// Positions cached.
    pub fn len(&self, width: usize) -> usize {
        self.keys.len() / width
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn bytes(&self) -> usize {
        (self.keys.capacity() + self.values.capacity()) * 2
    }

    /// Appends the keys and values of new tokens (rows of `width = kv_heads · head_dim`).
    pub fn append(&mut self, keys: &[f32], values: &[f32]) {
        self.keys.extend(keys.iter().map(|&v| f16::from_f32(v)));
        self.values.extend(values.iter().map(|&v| f16::from_f32(v)));
    }

    /// Keeps the first `positions` tokens only (a failed step rolls back what it added).
    pub fn truncate(&mut self, positions: usize, width: usize) {
        self.keys.truncate(positions * width);
        self.values.truncate(positions * width);
    }
}

/// The shape of an attention computation.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k.
    pub scale: f32,
    /// Keys older than this many positions are not seen (sliding-window layers).
    pub window: Option<usize>,
    /// `cap · tanh(score / cap)` before the softmax (Gemma 2 style), when set.
    pub softcap: Option<f32>,
}

/// Attention of one query row (all heads) at `position` against `cache`, which already
/// holds positions `0..=position`; writes `n_heads · head_dim` values into `out`.
pub fn attend_row(
    shape: &AttentionShape,
    q: &[f32],
    cache: &KvLayer,
    position: usize,
    kv_head: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = shape.head_dim;
    let width = shape.n_kv_heads * d;
    let group = shape.n_heads / shape.n_kv_heads;
    let first = match shape.window {
        Some(w) => (position + 1).saturating_sub(w),
        None => 0,
    };
    let count = position + 1 - first;
    let mut key = vec![0f32; d];
    for h in kv_head * group..(kv_head + 1) * group {
        let qh = &q[h * d..(h + 1) * d];
        scores.clear();
        for t in first..=position {
            let k = &cache.keys[t * width + kv_head * d..t * width + (kv_head + 1) * d];
            for (o, v) in key.iter_mut().zip(k) {
                *o = v.to_f32();
            }
            let mut s = dot(qh, &key) * shape.scale;
            if let Some(cap) = shape.softcap {
                s = cap * super::ops::tanh(s / cap);
            }
            scores.push(s);
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = exp(*s - max);
            total += *s;
        }
        let oh = &mut out[h * d..(h + 1) * d];
        oh.fill(0.0);
        for (i, t) in (first..=position).enumerate() {
            let weight = scores[i] / total;
            let v = &cache.values[t * width + kv_head * d..t * width + (kv_head + 1) * d];
            for (o, x) in oh.iter_mut().zip(v) {
                *o = weight.mul_add(x.to_f32(), *o);
            }
        }
        debug_assert_eq!(scores.len(), count);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            lanes[l] = a[i * 8 + l].mul_add(b[i * 8 + l], lanes[l]);
        }
    }
    let mut total: f32 = lanes.iter().sum();
    for i in chunks * 8..a.len() {
        total = a[i].mul_add(b[i], total);
    }
    total
}
