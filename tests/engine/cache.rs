//! Per-request KV caches: bounded by count and bytes, freed on finish, evicted requests
//! told so.

use candle_core::quantized::GgmlDType;
use exo::catalog::{ModelFormat, ResolvedModel};
use exo::engine::serve::kv_cache::CacheLimits;
use exo::engine::{DeviceChoice, EngineConfig, LoadedModel, ShardInput};

use crate::synthetic::{LAYERS, Tiny, random_weights, write_gguf};

fn tiny_model(limits: CacheLimits) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(
        &path,
        &random_weights(
            Tiny {
                qwen2: false,
                tied: true,
            },
            11,
        ),
        GgmlDType::F32,
        None,
    );
    let mut config = EngineConfig::new(
        ResolvedModel {
            id: "tiny".into(),
            path,
            format: ModelFormat::Gguf,
        },
        DeviceChoice::Cpu,
    );
    config.cache_limits = limits;
    let model = LoadedModel::open(&config).unwrap();
    (dir, model)
}

#[test]
fn the_least_recently_used_request_is_evicted_past_the_count_bound() {
    let (_dir, model) = tiny_model(CacheLimits {
        max_requests: 2,
        max_bytes: usize::MAX,
    });
    for id in ["a", "b", "c"] {
        model
            .step(id, 0, LAYERS, ShardInput::Tokens(vec![1, 2]), 0)
            .unwrap();
    }
    assert_eq!(model.active_requests(), 2);
    let error = model
        .step("a", 0, LAYERS, ShardInput::Tokens(vec![3]), 2)
        .expect_err("a's cache was evicted");
    assert!(format!("{error:#}").contains("evicted"), "{error:#}");
    model
        .step("c", 0, LAYERS, ShardInput::Tokens(vec![3]), 2)
        .unwrap();
}

#[test]
fn caches_are_bounded_by_bytes_and_freed_on_finish() {
    let (_dir, unbounded) = tiny_model(CacheLimits::default());
    unbounded
        .step("one", 0, LAYERS, ShardInput::Tokens(vec![1, 2, 3]), 0)
        .unwrap();
    let one_request = unbounded.cache_bytes();
    assert!(one_request > 0);
    assert_eq!(unbounded.finish("one"), 1);
    assert_eq!(
        (unbounded.active_requests(), unbounded.cache_bytes()),
        (0, 0)
    );

    let (_dir, bounded) = tiny_model(CacheLimits {
        max_requests: 100,
        max_bytes: one_request * 2,
    });
    for i in 0..5 {
        bounded
            .step(
                &format!("r{i}"),
                0,
                LAYERS,
                ShardInput::Tokens(vec![1, 2, 3]),
                0,
            )
            .unwrap();
        assert!(bounded.cache_bytes() <= one_request * 2);
    }
    assert_eq!(bounded.active_requests(), 2);
}
