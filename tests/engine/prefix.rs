//! The prefix cache (engine::serve::prefix_cache): a request whose prompt starts with
//! blocks an earlier request kept prefills only the rest, and the logits it gets are the
//! very bits of a full prefill — whole model or sharded, and after evictions.

use exo::catalog::{ModelFormat, ResolvedModel};
use exo::engine::model::shard_io::{ShardInput, ShardOutput};
use exo::engine::serve::batcher::StepJob;
use exo::engine::serve::prefix_cache::{BLOCK_TOKENS, PrefixMiss, block_hashes};
use exo::engine::{ChatMessage, DeviceChoice, EngineConfig, LoadedModel};

use crate::real_model::smollm;
use crate::support::default_model;

/// Runs one step of `id` over the layers `[start, end)` and returns its output.
fn step(
    model: &LoadedModel,
    id: &str,
    (start, end): (usize, usize),
    input: ShardInput,
    position: usize,
    prefix: &[u64],
) -> anyhow::Result<ShardOutput> {
    let (sink, _unused) = tokio::sync::mpsc::unbounded_channel();
    let job = StepJob {
        request_id: id.to_string(),
        start,
        end,
        input,
        position,
        reserve_positions: 1024,
        prefix: prefix.to_vec(),
        group: None,
        tag: 0,
        sink,
    };
    let (done, _) = model.run_batch(vec![job]).pop().unwrap();
    done.output
}

/// Runs `tokens` from `position` through the model cut at `cut` (None: whole), the first
/// step naming `prefix`, in chunks of `chunk`; the last logits.
fn prefill(
    model: &LoadedModel,
    id: &str,
    cut: Option<usize>,
    tokens: &[u32],
    mut position: usize,
    prefix: &[u64],
    chunk: usize,
) -> anyhow::Result<Vec<f32>> {
    let layers = model.config().n_layers;
    let ranges = match cut {
        Some(cut) => vec![(0, cut), (cut, layers)],
        None => vec![(0, layers)],
    };
    let mut logits = Vec::new();
    for (i, piece) in tokens.chunks(chunk).enumerate() {
        let named = if i == 0 { prefix } else { &[] };
        let mut input = ShardInput::Tokens(piece.to_vec());
        for range in &ranges {
            match step(model, id, *range, input, position, named)? {
                ShardOutput::Hidden(hidden) => input = ShardInput::Hidden(hidden),
                ShardOutput::Logits(l) => {
                    logits = l;
                    break;
                }
            }
        }
        position += piece.len();
    }
    Ok(logits)
}

fn bits(logits: &[f32]) -> Vec<u32> {
    logits.iter().map(|v| v.to_bits()).collect()
}

/// A conversation's first turn and its next (which starts with the first's tokens).
fn two_turns(model: &LoadedModel) -> (Vec<u32>, Vec<u32>) {
    let tokenizer = model.tokenizer();
    let system = ChatMessage::new(
        "system",
        "You are a careful assistant for a travel agency. Answer in one short sentence, \
         name the country first, and never invent facts you are not sure about.",
    );
    let first = vec![
        system.clone(),
        ChatMessage::new("user", "Which country is Lyon in?"),
    ];
    let mut second = first.clone();
    second.push(ChatMessage::new("assistant", "France. Lyon is in France."));
    second.push(ChatMessage::new("user", "And Porto?"));
    (
        tokenizer.encode_chat(&first).unwrap(),
        tokenizer.encode_chat(&second).unwrap(),
    )
}

/// The next turn, prefilled after restoring what the first turn kept, gives the logits
/// of a full prefill bit for bit: on the whole model and on two shards, and the decoding
/// step after it too.
#[test]
fn a_restored_prefix_gives_the_logits_of_a_full_prefill() {
    let model = smollm();
    let (first, second) = two_turns(&model);
    assert!(first.len() > 3 * BLOCK_TOKENS, "{} tokens", first.len());
    assert_eq!(second[..first.len()], first[..]);
    for cut in [None, Some(11)] {
        let tag = cut.map_or("whole".to_string(), |c| format!("cut{c}"));
        let before = model.prefix_stats();
        let first_id = format!("prefix-first-{tag}");
        prefill(&model, &first_id, cut, &first, 0, &[], 20).unwrap();
        let hashes = block_hashes(&first);
        assert_eq!(model.finish_keeping(&first_id, &hashes), hashes.len());
        assert!(!model.has_cache(&first_id, 0, model.config().n_layers));

        let second_hashes = block_hashes(&second);
        assert_eq!(second_hashes[..hashes.len()], hashes[..]);
        let reused = hashes.len() * BLOCK_TOKENS;
        let full_id = format!("prefix-full-{tag}");
        let reused_id = format!("prefix-reused-{tag}");
        let full = prefill(&model, &full_id, cut, &second, 0, &[], 256).unwrap();
        let restored = prefill(
            &model,
            &reused_id,
            cut,
            &second[reused..],
            reused,
            &hashes,
            256,
        )
        .unwrap();
        assert_eq!(
            bits(&restored),
            bits(&full),
            "{tag}: a restored prefix of {reused} tokens changes the logits"
        );
        let after = model.prefix_stats();
        let ranges: usize = if cut.is_some() { 2 } else { 1 };
        assert_eq!(after.hits - before.hits, ranges as u64);
        assert_eq!(
            after.reused_tokens - before.reused_tokens,
            (ranges * reused) as u64
        );
        // The decoding step after it agrees too.
        let next = exo::engine::serve::sampling::argmax(&full);
        let at = second.len();
        let decode = |id: &str| prefill(&model, id, cut, &[next], at, &[], 1).unwrap();
        assert_eq!(bits(&decode(&reused_id)), bits(&decode(&full_id)));
        model.finish(&full_id);
        model.finish(&reused_id);
    }
}

/// A prefix the cache does not hold is a [`PrefixMiss`], not a wrong answer.
#[test]
fn a_prefix_the_cache_lacks_is_a_miss() {
    let model = smollm();
    let layers = model.config().n_layers;
    let error = step(
        &model,
        "prefix-unknown",
        (0, layers),
        ShardInput::Tokens(vec![1, 2, 3]),
        BLOCK_TOKENS,
        &[0xdead_beef],
    )
    .unwrap_err();
    assert!(error.is::<PrefixMiss>(), "{error:#}");
    assert!(!model.has_cache("prefix-unknown", 0, layers));
}

/// Under a budget of two blocks, a chain of more keeps its first two (its end is
/// evicted first), and those still restore to the full prefill's logits.
#[test]
fn eviction_under_a_small_budget_keeps_the_chain_start_and_answers_right() {
    const KEPT: usize = 2;
    let mut config = EngineConfig::new(
        ResolvedModel {
            id: "smollm2-135m".into(),
            path: default_model().to_path_buf(),
            format: ModelFormat::Gguf,
        },
        DeviceChoice::Cpu,
    );
    let layers = 30;
    // f16 keys and values: 3 KV heads of 64 per layer.
    let block_bytes = layers * 2 * 3 * 64 * 2 * BLOCK_TOKENS;
    config.prefix_cache_bytes = KEPT * block_bytes;
    let model = LoadedModel::open(&config).unwrap();
    assert_eq!(model.config().n_layers, layers);
    let (first, second) = two_turns(&model);
    prefill(&model, "small-first", None, &first, 0, &[], 64).unwrap();
    let hashes = block_hashes(&first);
    assert!(hashes.len() > KEPT, "{} blocks", hashes.len());
    assert_eq!(model.finish_keeping("small-first", &hashes), KEPT);
    let stats = model.prefix_stats();
    assert_eq!(stats.blocks, KEPT);
    assert_eq!(stats.evictions, (hashes.len() - KEPT) as u64);
    assert!(stats.bytes <= config.prefix_cache_bytes, "{stats:?}");
    // The evicted end is a miss; the kept start restores exactly.
    let all = hashes.len() * BLOCK_TOKENS;
    let missed = prefill(
        &model,
        "small-miss",
        None,
        &second[all..],
        all,
        &hashes,
        256,
    );
    assert!(missed.unwrap_err().is::<PrefixMiss>());
    let kept = KEPT * BLOCK_TOKENS;
    let full = prefill(&model, "small-full", None, &second, 0, &[], 256).unwrap();
    let restored = prefill(
        &model,
        "small-restored",
        None,
        &second[kept..],
        kept,
        &hashes[..KEPT],
        256,
    )
    .unwrap();
    assert_eq!(bits(&restored), bits(&full));
}
