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

/// The most alternatives a request may ask for per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The log-probability of a sampled token and of the most likely alternatives, as the
/// API reports them (`logprobs`/`top_logprobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// The `k` most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax of `logits` (the model's distribution at temperature 1, before any
/// temperature, top-k or top-p cut: the numbers do not depend on how the token was drawn)
/// at `token`, and its `k` best entries.
///
/// Computed in f64 with the max subtracted first, so that exp(logprob) sums to 1 over the
/// vocabulary up to rounding; non-finite logits count as impossible (-inf).
pub fn logprobs(logits: &[f32], token: u32, k: usize) -> anyhow::Result<TokenLogprobs> {
    let Some(&chosen) = logits.get(token as usize) else {
        bail!(
            "token {token} is outside the {} logits of the model",
            logits.len()
        );
    };
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        bail!("every logit is infinite or NaN");
    }
    let total: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| (f64::from(l) - f64::from(max)).exp())
        .sum();
    let log_total = total.ln();
    let logprob = |l: f32| -> f32 {
        if l.is_finite() {
            (f64::from(l) - f64::from(max) - log_total) as f32
        } else {
            f32::NEG_INFINITY
        }
    };
    let k = k.min(MAX_TOP_LOGPROBS).min(logits.len());
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k);
    if k > 0 {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let better = |a: &u32, b: &u32| {
            let (la, lb) = (logits[*a as usize], logits[*b as usize]);
            // Non-finite last; then larger first; then lower id first.
            (lb.is_finite(), lb)
                .partial_cmp(&(la.is_finite(), la))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(b))
        };
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, better);
            order.truncate(k);
        }
        order.sort_unstable_by(better);
        top.extend(order.iter().map(|&i| (i, logprob(logits[i as usize]))));
    }
    Ok(TokenLogprobs {
        token,
        logprob: logprob(chosen),
        top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_alternatives_first() {
        let logits = [1.0f32, 3.0, f32::NAN, 2.0, 3.0, f32::NEG_INFINITY];
        let lp = logprobs(&logits, 1, 3).unwrap();
        let finite = [1.0f64, 3.0, 2.0, 3.0];
        let total: f64 = finite.iter().map(|l| l.exp()).sum();
        assert!((f64::from(lp.logprob) - (3.0 - total.ln())).abs() < 1e-6);
        // Ties: the lower id first; non-finite logits last.
        let ids: Vec<u32> = lp.top.iter().map(|(t, _)| *t).collect();
        assert_eq!(ids, vec![1, 4, 3]);
        assert_eq!(lp.top[0].1, lp.logprob);
        let all = logprobs(&logits, 5, 20).unwrap();
        assert_eq!(all.logprob, f32::NEG_INFINITY);
        let mass: f64 = all.top.iter().map(|(_, l)| f64::from(*l).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-6, "{mass}");
        assert!(logprobs(&logits, 6, 1).is_err());
        assert!(logprobs(&[f32::NAN], 0, 1).is_err());
    }
}
