//! Generation with every shard in this process, chained in order (`exo generate`,
//! `exo bench`). The same steps the cluster runs across nodes, without the network.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::loaded_model::LoadedModel;
use super::sampling::{SamplingParams, sample};
use crate::engine::model::shard_io::{ShardInput, ShardOutput};
use crate::engine::text::generation::{Decoding, FinishReason, TokenOutcome};

/// What to generate.
#[derive(Debug, Clone)]
pub struct LocalRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence (benchmarks want a fixed token count).
    pub ignore_eos: bool,
}

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From the start to the first sampled token: the prompt's forward pass.
    pub prefill: Duration,
    /// From the first sampled token to the last.
    pub decode: Duration,
}

impl GenerationStats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Tokens after the first, over the time they took.
    pub fn decode_tok_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub struct LocalOutput {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub stats: GenerationStats,
}

/// Drops the request's caches however generation ends.
struct FinishOnDrop<'a> {
    model: &'a LoadedModel,
    request_id: String,
}

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.model.finish(&self.request_id);
    }
}

/// Generates with the model split into `ranges` (layer ranges, in order, covering every
/// layer), calling `on_text` with each piece of text as it becomes safe to show.
pub fn generate(
    model: &LoadedModel,
    ranges: &[(usize, usize)],
    request: &LocalRequest,
    mut on_text: impl FnMut(&str),
) -> anyhow::Result<LocalOutput> {
    check_ranges(ranges, model.config().n_layers)?;
    if request.prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if request.max_tokens == 0 {
        bail!("max_tokens must be at least 1");
    }
    request.sampling.validate()?;
    let context = model.config().context_length;
    if request.prompt.len() >= context {
        bail!(
            "the prompt has {} tokens; the model's context holds {context}, with room for at least one more",
            request.prompt.len()
        );
    }
    let guard = FinishOnDrop {
        model,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let tokenizer = model.tokenizer().clone();
    // No more tokens than the context holds after the prompt.
    let max_tokens = request.max_tokens.min(context - request.prompt.len());
    let mut decoding = Decoding::new(max_tokens, request.stop.clone());
    let mut generated = Vec::new();
    let mut text = String::new();
    let mut input = request.prompt.clone();
    let mut position = 0;
    let started = Instant::now();
    let mut first_token_at = None;
    let finish = loop {
        let logits = run_step(model, &guard.request_id, ranges, &input, position)?;
        position += input.len();
        let token = sample(&logits, &request.sampling, generated.len() as u64)?;
        first_token_at.get_or_insert_with(Instant::now);
        generated.push(token);
        if request.ignore_eos {
            if generated.len() >= max_tokens {
                break FinishReason::Length;
            }
        } else {
            match decoding.push(&tokenizer, token)? {
                TokenOutcome::Continue(piece) => {
                    on_text(&piece);
                    text.push_str(&piece);
                }
                TokenOutcome::Finished(piece, reason) => {
                    on_text(&piece);
                    text.push_str(&piece);
                    break reason;
                }
            }
        }
        input = vec![token];
    };
    let done = Instant::now();
    let first = first_token_at.unwrap_or(done);
    Ok(LocalOutput {
        text,
        tokens: generated.clone(),
        finish,
        stats: GenerationStats {
            prompt_tokens: request.prompt.len(),
            generated_tokens: generated.len(),
            prefill: first - started,
            decode: done - first,
        },
    })
}

/// One step through every shard in order; the logits of the last position.
fn run_step(
    model: &LoadedModel,
    request_id: &str,
    ranges: &[(usize, usize)],
    tokens: &[u32],
    position: usize,
) -> anyhow::Result<Vec<f32>> {
    let mut input = ShardInput::Tokens(tokens.to_vec());
    for &(start, end) in ranges {
        match model.step(request_id, start, end, input, position)? {
            ShardOutput::Hidden(hidden) => input = ShardInput::Hidden(hidden),
            ShardOutput::Logits(logits) => return Ok(logits),
        }
    }
    bail!("the last shard produced no logits")
}

/// The ranges must chain from layer 0 to the last layer without gaps or overlaps.
fn check_ranges(ranges: &[(usize, usize)], n_layers: usize) -> anyhow::Result<()> {
    let mut next = 0;
    for &(start, end) in ranges {
        if start != next || end <= start {
            bail!("shard ranges {ranges:?} do not chain from layer 0 to {n_layers}");
        }
        next = end;
    }
    if next != n_layers {
        bail!("shard ranges {ranges:?} do not cover all {n_layers} layers");
    }
    Ok(())
}
