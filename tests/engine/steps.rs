//! Steps run straight on a loaded model, one batch at a time, as the batcher's worker
//! runs them: what the replay and tensor-parallel tests drive the model with.

use std::sync::Arc;

use exo::engine::LoadedModel;
use exo::engine::group::GroupPlacement;
use exo::engine::model::shard_io::{ShardInput, ShardOutput};
use exo::engine::serve::batcher::StepJob;

/// Runs `steps` (request id, tokens, position) as one batch over the whole model, as a
/// group's leader when `group` is given, a new request reserving `reserve_positions`
/// positions; each step's logits.
pub fn batch_logits(
    model: &LoadedModel,
    group: Option<&Arc<GroupPlacement>>,
    reserve_positions: usize,
    steps: Vec<(&str, Vec<u32>, usize)>,
) -> Vec<Vec<f32>> {
    let layers = model.config().n_layers;
    let (sink, _unused) = tokio::sync::mpsc::unbounded_channel();
    let jobs = steps
        .into_iter()
        .enumerate()
        .map(|(tag, (id, tokens, position))| StepJob {
            request_id: id.to_string(),
            start: 0,
            end: layers,
            input: ShardInput::Tokens(tokens),
            position,
            reserve_positions,
            prefix: Vec::new(),
            tag: tag as u64,
            sink: sink.clone(),
            group: group.cloned(),
        })
        .collect();
    let mut done = model.run_batch(jobs);
    done.sort_by_key(|(d, _)| d.tag);
    done.into_iter()
        .map(|(d, _)| match d.output.unwrap() {
            ShardOutput::Logits(logits) => logits,
            ShardOutput::Hidden(_) => panic!("the whole model returns logits"),
        })
        .collect()
}

/// The greedy token: the first of the largest logits.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}
