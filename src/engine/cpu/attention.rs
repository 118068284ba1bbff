//! Attention on the CPU over per-sequence key/value caches.
//!
//! Every query row is computed on its own terms, by the same code whether it comes from a
//! long prompt or a single decoded token: its keys and values are written to the cache
//! first, then it attends to cached positions only, in order. So a position's output is
//! the same bit for bit whether it was decoded one token at a time or re-run as part of a
//! prompt. A few rows of one sequence are taken together so that each cached key and value
//! is converted once for all of them (and for every query head that shares it).
//! Keys and values are kept in f16 (half the memory of f32, as llama.cpp does).

use half::f16;

use super::isa::Isa;
use super::ops::exp;

/// Query rows of one sequence attended together.
pub const ROWS: usize = 4;

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

/// Copies of cached positions, for the prefix cache (`engine::serve::prefix_cache`): it
/// keeps blocks of finished requests' positions and builds new requests' caches from them.
impl KvLayer {
    /// Positions `[from, to)` as a cache of their own (None when the cache holds fewer).
    pub fn copy_positions(&self, from: usize, to: usize, width: usize) -> Option<KvLayer> {
        let range = from * width..to * width;
        Some(KvLayer {
            keys: self.keys.get(range.clone())?.to_vec(),
            values: self.values.get(range)?.to_vec(),
        })
    }

    /// Appends `blocks`' positions, in order, after this cache's own.
    pub fn extend_from(&mut self, blocks: &[&KvLayer]) {
        let more: usize = blocks.iter().map(|b| b.keys.len()).sum();
        self.keys.reserve_exact(more);
        self.values.reserve_exact(more);
        for block in blocks {
            self.keys.extend_from_slice(&block.keys);
            self.values.extend_from_slice(&block.values);
        }
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

impl AttentionShape {
    /// The first position a query at `position` sees.
    fn first_visible(&self, position: usize) -> usize {
        match self.window {
            Some(w) => (position + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// Buffers one worker reuses across calls.
#[derive(Default)]
pub struct Scratch {
    scores: Vec<f32>,
    key: Vec<f32>,
}

/// Attention of up to [`ROWS`] query rows of one sequence for the query heads that share
/// key/value head `kv_head`. `q[i]` is row i (all heads), at `positions[i]`; `cache` holds
/// every position up to the last of them. `out[i]` receives row i's output for those heads
/// only (`group · head_dim` values).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    isa: Isa,
    shape: &AttentionShape,
    q: &[&[f32]],
    positions: &[usize],
    cache: &KvLayer,
    kv_head: usize,
    out: &mut [&mut [f32]],
    scratch: &mut Scratch,
) {
    let d = shape.head_dim;
    let width = shape.n_kv_heads * d;
    let group = shape.n_heads / shape.n_kv_heads;
    let heads = kv_head * group..(kv_head + 1) * group;
    let rows = q.len();
    let first = positions
        .iter()
        .map(|&p| shape.first_visible(p))
        .min()
        .unwrap_or(0);
    let last = positions.iter().copied().max().unwrap_or(0);
    let span = last + 1 - first;
    // scores[(i · group + h) · span + (t − first)] for row i, head h, key t.
    scratch.scores.clear();
    scratch
        .scores
        .resize(rows * group * span, f32::NEG_INFINITY);
    scratch.key.resize(d, 0.0);
    let span_of = |t: usize| t * width + kv_head * d..t * width + (kv_head + 1) * d;
    for t in first..=last {
        to_f32(isa, &cache.keys[span_of(t)], &mut scratch.key);
        for i in 0..rows {
            if t < shape.first_visible(positions[i]) || t > positions[i] {
                continue;
            }
            for (g, h) in heads.clone().enumerate() {
                let mut s = dot(isa, &q[i][h * d..(h + 1) * d], &scratch.key) * shape.scale;
                if let Some(cap) = shape.softcap {
                    s = cap * super::ops::tanh(s / cap);
                }
                scratch.scores[(i * group + g) * span + (t - first)] = s;
            }
        }
    }
    // Softmax per (row, head), over that row's visible keys, in order.
    for i in 0..rows {
        let visible = shape.first_visible(positions[i]) - first..positions[i] + 1 - first;
        for g in 0..group {
            let row = &mut scratch.scores[(i * group + g) * span..(i * group + g + 1) * span];
            let row = &mut row[visible.clone()];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut total = 0f32;
            for s in row.iter_mut() {
                *s = exp(*s - max);
                total += *s;
            }
            let inverse = 1.0 / total;
            for s in row.iter_mut() {
                *s *= inverse;
            }
        }
    }
    for o in out.iter_mut() {
        o.fill(0.0);
    }
    for t in first..=last {
        to_f32(isa, &cache.values[span_of(t)], &mut scratch.key);
        for i in 0..rows {
            if t < shape.first_visible(positions[i]) || t > positions[i] {
                continue;
            }
            for g in 0..group {
                let weight = scratch.scores[(i * group + g) * span + (t - first)];
                axpy(isa, &mut out[i][g * d..(g + 1) * d], weight, &scratch.key);
            }
        }
    }
}

/// f16 values to f32.
fn to_f32(isa: Isa, from: &[f16], to: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx2 => {
            // SAFETY: both paths are only chosen on CPUs with AVX2 and F16C.
            unsafe { simd::to_f32(from, to) }
        }
        _ => {
            for (t, f) in to.iter_mut().zip(from) {
                *t = f.to_f32();
            }
        }
    }
}

/// `a · b`, summed in eight lanes (sixteen with AVX-512) then across them.
fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            // SAFETY: chosen only on CPUs with AVX-512 F.
            unsafe { simd::dot512(a, b) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: chosen only on CPUs with AVX2 and FMA.
            unsafe { simd::dot256(a, b) }
        }
        _ => super::dot::portable_dot_f32(a, b),
    }
}

/// `out += w · v`.
fn axpy(isa: Isa, out: &mut [f32], w: f32, v: &[f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx2 => {
            // SAFETY: both paths are only chosen on CPUs with AVX2 and FMA.
            unsafe { simd::axpy(out, w, v) }
        }
        _ => {
            for (o, &x) in out.iter_mut().zip(v) {
                *o = w.mul_add(x, *o);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn to_f32(from: &[f16], to: &mut [f32]) {
        let n = from.len().min(to.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n for both slices; f16 is two bytes.
            unsafe {
                let h = _mm_loadu_si128(from.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(to.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        while i < n {
            to[i] = from[i].to_f32();
            i += 1;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n for both slices.
            unsafe {
                acc = _mm512_fmadd_ps(
                    _mm512_loadu_ps(a.as_ptr().add(i)),
                    _mm512_loadu_ps(b.as_ptr().add(i)),
                    acc,
                );
            }
            i += 16;
        }
        let mut total = _mm512_reduce_add_ps(acc);
        while i < n {
            total = a[i].mul_add(b[i], total);
            i += 1;
        }
        total
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot256(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n for both slices.
            unsafe {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc,
                );
            }
            i += 8;
        }
        let lo = _mm256_castps256_ps128(acc);
        let hi = _mm256_extractf128_ps(acc, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut total = _mm_cvtss_f32(s);
        while i < n {
            total = a[i].mul_add(b[i], total);
            i += 1;
        }
        total
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
        let n = out.len().min(v.len());
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n for both slices.
            unsafe {
                let o = out.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    o,
                    _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.as_ptr().add(i)), _mm256_loadu_ps(o)),
                );
            }
            i += 8;
        }
        while i < n {
            out[i] = w.mul_add(v[i], out[i]);
            i += 1;
        }
    }
}
