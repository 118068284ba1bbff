//! Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

use anyhow::bail;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens. Travels with every request (the last shard samples).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy: always the most likely token.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this (1 = all).
    pub top_p: f32,
    /// Keep this many most likely tokens (0 = all).
    pub top_k: usize,
    /// With a seed, the same request samples the same tokens every time.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Rejects values no sampler can honour.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            bail!(
                "temperature must be a finite number >= 0, not {}",
                self.temperature
            );
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            bail!("top_p must be in (0, 1], not {}", self.top_p);
        }
        Ok(())
    }
}

/// Picks the token for decoding step `step` of a request.
///
/// The random draw depends only on (seed, step), not on state kept between steps, so a
/// seeded request samples the same way whichever node holds the last shard.
pub fn sample(logits: &[f32], params: &SamplingParams, step: u64) -> anyhow::Result<u32> {
    if logits.is_empty() {
        bail!("no logits to sample from");
    }
    // Below this, sampling is greedy in all but name (and dividing by it overflows).
    if params.temperature < 1e-4 {
        return Ok(argmax(logits));
    }
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| {
            (
                i as u32,
                (f64::from(l) / f64::from(params.temperature)) as f32,
            )
        })
        .collect();
    if candidates.is_empty() {
        bail!("every logit is infinite or NaN");
    }
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    if params.top_k > 0 {
        candidates.truncate(params.top_k);
    }
    // Softmax over the candidates, most likely first.
    let max = candidates[0].1;
    let mut total = 0.0f64;
    let mut probs: Vec<f64> = candidates
        .iter()
        .map(|(_, l)| {
            let p = f64::from(l - max).exp();
            total += p;
            p
        })
        .collect();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                cumulative += p;
                cumulative >= f64::from(params.top_p)
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
    }
    let mass: f64 = probs.iter().sum();
    if !mass.is_finite() || mass <= 0.0 {
        return Ok(candidates[0].0);
    }
    let seed = params
        .seed
        .map(|s| s ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .unwrap_or_else(rand::random);
    let mut draw = StdRng::seed_from_u64(seed).random::<f64>() * mass;
    for (i, p) in probs.iter().enumerate() {
        draw -= p;
        if draw <= 0.0 {
            return Ok(candidates[i].0);
        }
    }
    Ok(candidates[probs.len() - 1].0)
}

/// The index of the largest value (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, value) in logits.iter().enumerate() {
        if value.total_cmp(&logits[best]).is_gt() {
            best = i;
        }
    }
    best as u32
}
