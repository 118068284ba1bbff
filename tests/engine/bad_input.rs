//! Bad input gives a clear error, never a panic.

use std::io::Write;

use candle_core::quantized::GgmlDType;
use exo::catalog::{ModelFormat, resolve_model};
use exo::engine::serve::local::{LocalRequest, generate};
use exo::engine::{SamplingParams, ShardInput};

use crate::real_model::smollm;
use crate::support::default_model;
use crate::synthetic::{LAYERS, Tiny, open, random_weights, write_gguf};

fn error_text<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(error) => format!("{error:#}"),
    }
}

#[test]
fn a_truncated_gguf_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(default_model()).unwrap();
    let path = dir.path().join("truncated.gguf");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let text = error_text(open(&path, ModelFormat::Gguf));
    assert!(text.contains("truncated"), "{text}");
    // Cut inside the header too.
    std::fs::write(&path, &bytes[..1000]).unwrap();
    let text = error_text(open(&path, ModelFormat::Gguf));
    assert!(text.contains("not a readable GGUF"), "{text}");
}

#[test]
fn a_corrupt_gguf_is_not_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.gguf");
    let mut file = std::fs::File::create(&path).unwrap();
    let noise: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    file.write_all(&noise).unwrap();
    let text = error_text(open(&path, ModelFormat::Gguf));
    assert!(text.contains("not a readable GGUF"), "{text}");
    // A valid magic with garbage after it.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&noise);
    std::fs::write(&path, bytes).unwrap();
    let text = error_text(open(&path, ModelFormat::Gguf));
    assert!(text.contains("not a readable GGUF"), "{text}");
}

#[test]
fn a_checksum_mismatch_is_reported() {
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().join("smollm2-135m");
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = std::fs::read(default_model()).unwrap();
    bytes[5000] ^= 0xff;
    std::fs::write(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), bytes).unwrap();
    let text = error_text(resolve_model("smollm2-135m", models.path()));
    assert!(text.contains("checksum mismatch"), "{text}");
    // And a model never fetched says how to fetch it.
    let empty = tempfile::tempdir().unwrap();
    let text = error_text(resolve_model("smollm2-135m", empty.path()));
    assert!(
        text.contains("exo models fetch smollm2-135m") && text.contains("fetch-model.sh"),
        "{text}"
    );
    let text = error_text(resolve_model("no-such-model", empty.path()));
    assert!(
        text.contains("unknown model 'no-such-model'") && text.contains("smollm2-135m"),
        "{text}"
    );
}

#[test]
fn a_shard_range_outside_the_model_is_refused() {
    let model = smollm();
    for (start, end) in [(0, 31), (30, 31), (10, 10), (20, 10)] {
        let text = error_text(model.step("r", start, end, ShardInput::Tokens(vec![1]), 0));
        assert!(
            text.contains("shard") && (text.contains("outside") || text.contains("empty")),
            "{text}"
        );
    }
    let request = LocalRequest {
        prompt: vec![1, 2],
        max_tokens: 2,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: false,
    };
    let text = error_text(generate(&model, &[(0, 10), (12, 30)], &request, |_| {}));
    assert!(text.contains("do not chain"), "{text}");
}

#[test]
fn a_tensor_missing_from_the_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = random_weights(
        Tiny {
            qwen2: false,
            tied: false,
        },
        9,
    );
    let path = dir.path().join("missing.gguf");
    write_gguf(&path, &w, GgmlDType::F32, Some("blk.3.ffn_up.weight"));
    let model = open(&path, ModelFormat::Gguf).unwrap();
    // Shards without layer 3 load; the one with it names the missing tensor.
    model.shard(0, 3).unwrap();
    let text = error_text(model.shard(2, LAYERS));
    assert!(
        text.contains("blk.3.ffn_up.weight") && text.contains("missing"),
        "{text}"
    );
}

#[test]
fn an_empty_prompt_and_a_prompt_longer_than_the_context_are_refused() {
    let model = smollm();
    let request = |prompt: Vec<u32>| LocalRequest {
        prompt,
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: false,
    };
    let text = error_text(generate(&model, &[(0, 30)], &request(Vec::new()), |_| {}));
    assert!(text.contains("prompt is empty"), "{text}");
    let context = model.config().context_length;
    let text = error_text(generate(
        &model,
        &[(0, 30)],
        &request(vec![42; context + 5]),
        |_| {},
    ));
    assert!(text.contains("context"), "{text}");
    let text = error_text(model.tokenizer().encode_chat(&[]));
    assert!(text.contains("no messages"), "{text}");
    // A token id outside the vocabulary.
    let text = error_text(model.step("bad-token", 0, 30, ShardInput::Tokens(vec![1_000_000]), 0));
    assert!(text.contains("outside the vocabulary"), "{text}");
}

#[test]
fn a_step_at_the_wrong_position_or_after_eviction_is_refused() {
    let model = smollm();
    let text = error_text(model.step("never-started", 0, 30, ShardInput::Tokens(vec![1]), 5));
    assert!(
        text.contains("no KV cache") && text.contains("evicted"),
        "{text}"
    );
    model
        .step("moving", 0, 30, ShardInput::Tokens(vec![1, 2, 3]), 0)
        .unwrap();
    let text = error_text(model.step("moving", 0, 30, ShardInput::Tokens(vec![4]), 7));
    assert!(text.contains("position 3"), "{text}");
    model
        .step("moving", 0, 30, ShardInput::Tokens(vec![4]), 3)
        .unwrap();
    assert_eq!(model.finish("moving"), 1);
}
