//! Bad files of every family: an unsupported architecture or quantization, mismatched
//! shapes, missing tensors, NaN weights. Each gives an error that names the problem; none
//! panics.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};
use exo::catalog::ModelFormat;
use exo::engine::{CpuMatmul, LoadedModel, ShardInput};

use super::generate::{Family, Gguf, Model};
use super::{KERNELS, prompt};
use crate::synthetic::open_with;

fn error_text<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(error) => format!("{error:#}"),
    }
}

/// The family's generated model as a GGUF file, altered by `alter`, in a fresh directory.
fn gguf_file(
    family: Family,
    alter: impl FnOnce(&mut Gguf),
) -> (tempfile::TempDir, std::path::PathBuf) {
    let config = match family {
        Family::Llama3 => super::llama3::config(),
        Family::Mistral => super::mistral::config(),
        Family::Qwen2 => super::qwen2::config(),
        Family::Qwen3 => super::qwen3::config(),
        Family::Gemma3 => super::gemma3::config(32),
        Family::Phi3 => super::phi3::config(),
    };
    let mut gguf = Model::generate(family, config, 7).to_gguf();
    alter(&mut gguf);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    gguf.write(&path);
    (dir, path)
}

fn open(path: &std::path::Path, kernels: CpuMatmul) -> anyhow::Result<LoadedModel> {
    open_with(path, ModelFormat::Gguf, kernels)
}

/// One forward step through every layer, as one shard.
fn run(model: &LoadedModel) -> anyhow::Result<()> {
    let layers = model.config().n_layers;
    model.step("bad", 0, layers, ShardInput::Tokens(prompt(6)), 0)?;
    model.finish("bad");
    Ok(())
}

#[test]
fn an_unsupported_architecture_names_itself_and_what_is_supported() {
    let (_dir, path) = gguf_file(Family::Qwen3, |g| {
        g.set("general.architecture", Value::String("qwen3moe".into()))
    });
    let text = error_text(open(&path, CpuMatmul::default()));
    assert!(
        text.contains("qwen3moe") && text.contains("not supported"),
        "{text}"
    );
    let (_dir, path) = gguf_file(Family::Llama3, |g| {
        g.set("general.architecture", Value::String("mamba".into()))
    });
    let text = error_text(open(&path, CpuMatmul::default()));
    assert!(
        text.contains("unsupported model architecture 'mamba'"),
        "{text}"
    );
    for supported in ["llama", "qwen2", "qwen3", "gemma3", "phi3"] {
        assert!(text.contains(supported), "{text}");
    }
    // The same from a Hugging Face checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let mut config = super::qwen3::config();
    config["architectures"] = serde_json::json!(["Qwen3MoeForCausalLM"]);
    Model::generate(Family::Qwen3, config, 7).write_safetensors(dir.path());
    let text = error_text(open_with(
        dir.path(),
        ModelFormat::Safetensors,
        CpuMatmul::default(),
    ));
    assert!(
        text.contains("Qwen3MoeForCausalLM") && text.contains("not supported"),
        "{text}"
    );
}

#[test]
fn an_unsupported_quantization_names_the_type_and_the_supported_ones() {
    // K-quants need rows of whole 256-value blocks: a feed-forward block 256 wide.
    let mut config = super::qwen2::config();
    config["intermediate_size"] = serde_json::json!(256);
    let gguf = Model::generate(Family::Qwen2, config, 7).to_gguf();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q2k.gguf");
    gguf.write_with(&path, |name| {
        if name == "blk.1.ffn_down.weight" {
            GgmlDType::Q2K
        } else {
            GgmlDType::F32
        }
    });
    // The header reads; the shard holding the tensor refuses it, through every path.
    let model = open(&path, CpuMatmul::default()).unwrap();
    model.shard(2, 4).unwrap();
    let text = error_text(model.shard(0, 2));
    assert!(
        text.contains("blk.1.ffn_down.weight") && text.contains("Q2K"),
        "{text}"
    );
    assert!(
        text.contains("supported: ") && text.contains("Q4_K"),
        "{text}"
    );
    let text = error_text(run(&model));
    assert!(text.contains("Q2K"), "{text}");
}

#[test]
fn shapes_that_do_not_fit_the_config_are_named() {
    // More key/value heads in the metadata than the tensors hold.
    let (_dir, path) = gguf_file(Family::Qwen2, |g| {
        g.set("qwen2.attention.head_count_kv", Value::U32(4))
    });
    for kernels in KERNELS {
        let text = error_text(open(&path, kernels).and_then(|m| run(&m)));
        assert!(
            text.contains("blk.0.attn_k.weight") && text.contains("needs [64, 64]"),
            "{kernels}: {text}"
        );
    }
    // A matrix with the right rows and the wrong columns, a norm of the wrong width, an
    // embedding of the wrong width.
    let wrong: [(&str, &[usize]); 3] = [
        ("blk.1.ffn_down.weight", &[64, 96]),
        ("blk.2.attn_norm.weight", &[48]),
        ("token_embd.weight", &[super::generate::vocab_size(), 48]),
    ];
    for (name, shape) in wrong {
        let (_dir, path) = gguf_file(Family::Llama3, |g| {
            *g.tensor_mut(name) =
                Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu).unwrap()
        });
        for kernels in KERNELS {
            let text = error_text(open(&path, kernels).and_then(|m| run(&m)));
            assert!(
                text.contains(name) && text.contains("the model config needs"),
                "{kernels}: {text}"
            );
        }
    }
}

#[test]
fn a_missing_tensor_of_each_family_is_named() {
    let missing = [
        (Family::Llama3, "blk.1.ffn_gate.weight"),
        (Family::Qwen2, "blk.2.attn_v.bias"),
        (Family::Qwen3, "blk.0.attn_k_norm.weight"),
        (Family::Gemma3, "blk.3.post_ffw_norm.weight"),
        (Family::Phi3, "blk.1.attn_qkv.weight"),
        (Family::Phi3, "output_norm.weight"),
    ];
    for (family, name) in missing {
        let (_dir, path) = gguf_file(family, |g| g.tensors.retain(|(n, _)| n != name));
        for kernels in KERNELS {
            let text = error_text(open(&path, kernels).and_then(|m| run(&m)));
            assert!(
                text.contains(name) && text.contains("missing"),
                "{family:?}, {kernels}: {text}"
            );
        }
    }
}

#[test]
fn nan_weights_are_reported_not_propagated() {
    let nan = |shape: &[usize]| Tensor::full(f32::NAN, shape, &Device::Cpu).unwrap();
    // A norm: refused when the shard holding it loads.
    let (_dir, path) = gguf_file(Family::Gemma3, |g| {
        *g.tensor_mut("blk.2.ffn_norm.weight") = nan(&[64])
    });
    for kernels in KERNELS {
        let model = open(&path, kernels).unwrap();
        model.shard(3, 6).unwrap();
        let text = error_text(model.shard(0, 3));
        assert!(
            text.contains("blk.2.ffn_norm.weight") && text.contains("NaN"),
            "{kernels}: {text}"
        );
    }
    // A matrix: the activations it poisons are refused at the end of the shard.
    let (_dir, path) = gguf_file(Family::Phi3, |g| {
        let t = g.tensor_mut("blk.1.attn_qkv.weight");
        *t = nan(t.dims())
    });
    for kernels in KERNELS {
        let model = open(&path, kernels).unwrap();
        let text = error_text(run(&model));
        assert!(text.contains("NaN"), "{kernels}: {text}");
        let ranges = model.even_ranges(2).unwrap();
        let text = error_text(model.step(
            "split",
            ranges[0].0,
            ranges[0].1,
            ShardInput::Tokens(prompt(6)),
            0,
        ));
        assert!(
            text.contains("NaN") && text.contains("activations"),
            "{kernels}: {text}"
        );
        // Generation ends with the error, on one shard or several.
        let request = exo::engine::serve::local::LocalRequest {
            prompt: prompt(6),
            max_tokens: 4,
            sampling: exo::engine::SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: true,
        };
        for shards in [1, 3] {
            let ranges = model.even_ranges(shards).unwrap();
            let text = error_text(exo::engine::serve::local::generate(
                &model,
                &ranges,
                &request,
                |_| {},
            ));
            assert!(text.contains("NaN"), "{kernels}, {shards} shards: {text}");
        }
    }
}
