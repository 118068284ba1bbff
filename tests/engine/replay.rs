//! A request that loses a node is continued elsewhere by re-running its prompt and every
//! token generated so far as one prefill (DESIGN.md §4d). That is only invisible to the
//! client if the re-run's last row gives the very logits the decode step first gave: a
//! near-tie between two tokens must break the same way. These tests decode a request one
//! token at a time, batched beside another request as a busy node would, then re-prefill
//! its history in one piece and in odd chunks, and compare the logits bit for bit.

use exo::engine::{ChatMessage, LoadedModel};

use crate::real_model::{open_gemma, smollm};
use crate::steps::{argmax, batch_logits};

/// Runs `steps` (request id, input, position) as one batch over the whole model and
/// returns each step's logits.
fn batch(model: &LoadedModel, steps: Vec<(&str, Vec<u32>, usize)>) -> Vec<Vec<f32>> {
    batch_logits(model, None, 2048, steps)
}

fn bits(logits: &[f32]) -> Vec<u32> {
    logits.iter().map(|v| v.to_bits()).collect()
}

/// Decodes `tokens` greedy tokens of `prompt` (beside a neighbour request in every batch),
/// recording the logits that chose each; then re-prefills prompt + the first k generated
/// tokens, in one piece and in chunks of `chunk`, for several k, and checks the bits.
fn replay_matches_decode(model: &LoadedModel, prompt: Vec<u32>, neighbour: Vec<u32>, chunk: usize) {
    let tokens = 24;
    let first = batch(
        model,
        vec![
            ("decode", prompt.clone(), 0),
            ("neighbour", neighbour.clone(), 0),
        ],
    );
    let mut recorded = vec![first[0].clone()];
    let mut generated = vec![argmax(&first[0])];
    let mut neighbour_next = argmax(&first[1]);
    for i in 1..tokens {
        let position = prompt.len() + i - 1;
        let out = batch(
            model,
            vec![
                ("decode", vec![generated[i - 1]], position),
                ("neighbour", vec![neighbour_next], neighbour.len() + i - 1),
            ],
        );
        neighbour_next = argmax(&out[1]);
        generated.push(argmax(&out[0]));
        recorded.push(out[0].clone());
    }
    model.finish("decode");
    model.finish("neighbour");
    for k in [0, 1, 7, tokens - 1] {
        let mut history = prompt.clone();
        history.extend_from_slice(&generated[..k]);
        let whole = batch(model, vec![("replay-whole", history.clone(), 0)]);
        model.finish("replay-whole");
        assert_eq!(
            bits(&whole[0]),
            bits(&recorded[k]),
            "re-prefilling {} tokens in one piece differs from the decode step that produced token {k}",
            history.len()
        );
        let mut position = 0;
        let mut last = Vec::new();
        for piece in history.chunks(chunk) {
            last = batch(model, vec![("replay-chunked", piece.to_vec(), position)])
                .pop()
                .unwrap();
            position += piece.len();
        }
        model.finish("replay-chunked");
        assert_eq!(
            bits(&last),
            bits(&recorded[k]),
            "re-prefilling in chunks of {chunk} differs from the decode step for token {k}"
        );
    }
}

#[test]
fn a_replayed_history_gives_the_decode_steps_logits_bit_for_bit() {
    let model = smollm();
    let tokenizer = model.tokenizer();
    let prompt = tokenizer
        .encode_chat(&[ChatMessage::new("user", "Write a haiku about the sea.")])
        .unwrap();
    let neighbour = tokenizer
        .encode_chat(&[ChatMessage::new("user", "What is the capital of France?")])
        .unwrap();
    replay_matches_decode(&model, prompt, neighbour, 5);
}

#[test]
fn a_replayed_history_on_k_quants_and_local_attention_gives_the_same_bits() {
    // Gemma 3: Q4_K/Q6_K weights, sliding-window layers, GELU.
    let model = open_gemma();
    let tokenizer = model.tokenizer();
    let prompt = tokenizer.encode("The history of the lighthouse").unwrap();
    let neighbour = tokenizer.encode("Rust is a language that").unwrap();
    replay_matches_decode(&model, prompt, neighbour, 3);
}

#[test]
fn a_new_range_shares_the_layers_an_already_loaded_shard_holds() {
    // After a re-plan a node often runs a range overlapping the one it ran: only the new
    // layers are read. (That shared layers compute what fresh ones do is checked by the
    // real-model split tests, which load many overlapping ranges on one model.)
    let model = smollm();
    let before = model.shard(3, 12).unwrap();
    let wider = model.shard(3, 20).unwrap();
    assert_eq!(wider.shared_layers(&before), 9);
    let fresh = exo::engine::LoadedShard::load(
        &exo::engine::model::weights::WeightSource::open(crate::support::default_model()).unwrap(),
        wider.shard(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        exo::engine::CpuMatmul::default(),
    )
    .unwrap();
    assert_eq!(fresh.shared_layers(&before), 0);
    assert_eq!(fresh.layer_bytes(), wider.layer_bytes());
}
