//! `exo bench --batch N`: what a decode step costs for one row and for N rows at once.
//!
//! Continuous batching only pays if a batch of N decoding rows costs far less than N
//! single rows: the weights are read once per step, not once per row. This runs N
//! sequences in lock-step through the engine's batch path (the one a node's batcher
//! uses), each decoding its own greedy tokens, and times the steps.

use std::time::Instant;

use crate::engine::LoadedModel;
use crate::engine::model::shard_io::{ShardInput, ShardOutput};
use crate::engine::serve::batcher::StepJob;
use crate::engine::serve::sampling::argmax;

/// Median step times of a batch of one row and of `rows` rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchCost {
    pub rows: usize,
    pub steps: usize,
    pub one_row_ms: f64,
    pub batch_ms: f64,
    /// `batch_ms / one_row_ms`: the cost of the batch in single rows.
    pub batch_over_one: f64,
    /// Tokens per second the batch decodes in all.
    pub batch_tok_s: f64,
}

/// Decodes `steps` tokens for 1 and for `rows` sequences of `prompt` at once.
pub fn measure(
    model: &LoadedModel,
    prompt: &[u32],
    rows: usize,
    steps: usize,
) -> anyhow::Result<BatchCost> {
    let one = median_step_ms(model, prompt, 1, steps)?;
    let batch = median_step_ms(model, prompt, rows, steps)?;
    Ok(BatchCost {
        rows,
        steps,
        one_row_ms: one,
        batch_ms: batch,
        batch_over_one: batch / one,
        batch_tok_s: rows as f64 * 1000.0 / batch,
    })
}

fn median_step_ms(
    model: &LoadedModel,
    prompt: &[u32],
    rows: usize,
    steps: usize,
) -> anyhow::Result<f64> {
    let layers = model.config().n_layers;
    let ids: Vec<String> = (0..rows)
        .map(|r| format!("bench-batch-{rows}-{r}"))
        .collect();
    let (sink, _unused) = tokio::sync::mpsc::unbounded_channel();
    let job = |r: usize, tokens: Vec<u32>, position: usize| StepJob {
        request_id: ids[r].clone(),
        start: 0,
        end: layers,
        input: ShardInput::Tokens(tokens),
        position,
        reserve_positions: prompt.len() + steps + 1,
        prefix: Vec::new(),
        tag: r as u64,
        sink: sink.clone(),
        group: None,
    };
    let run = |jobs: Vec<StepJob>| -> anyhow::Result<Vec<u32>> {
        let mut done = model.run_batch(jobs);
        done.sort_by_key(|(d, _)| d.tag);
        done.into_iter()
            .map(|(d, _)| match d.output? {
                ShardOutput::Logits(logits) => Ok(argmax(&logits)),
                ShardOutput::Hidden(_) => anyhow::bail!("the whole model returned a hidden state"),
            })
            .collect()
    };
    let result = (|| {
        // Each sequence's prompt on its own, then every step as one batch of all rows.
        let mut next: Vec<u32> = Vec::with_capacity(rows);
        for r in 0..rows {
            next.extend(run(vec![job(r, prompt.to_vec(), 0)])?);
        }
        let mut times = Vec::with_capacity(steps);
        for s in 0..steps {
            let position = prompt.len() + s;
            let jobs = (0..rows).map(|r| job(r, vec![next[r]], position)).collect();
            let started = Instant::now();
            next = run(jobs)?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    })();
    for id in &ids {
        model.finish(id);
    }
    result
}
