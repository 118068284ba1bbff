//! Small models with random weights that the tests write themselves, in every format the
//! engine reads (safetensors llama and qwen2 in f32/f16/bf16, GGUF in f32 and Q8_0), so
//! every loader is covered without downloads; checked against a plain-tensor forward.

mod reference;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use exo::catalog::{ModelFormat, ResolvedModel};
use exo::engine::serve::local::{LocalRequest, generate};
use exo::engine::{
    CpuMatmul, DeviceChoice, EngineConfig, LoadedModel, SamplingParams, ShardInput, ShardOutput,
};

use reference::reference_logits;

/// The shape of the generated models.
#[derive(Clone, Copy)]
pub struct Tiny {
    pub qwen2: bool,
    pub tied: bool,
}

pub const LAYERS: usize = 5;
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 128;
const CONTEXT: usize = 96;
const THETA: f32 = 10_000.0;
const EPS: f64 = 1e-5;

/// The vocabulary of every tiny model.
pub fn vocabulary() -> Vec<String> {
    crate::support::byte_level_vocabulary()
}

fn vocab_size() -> usize {
    vocabulary().len()
}

/// Random weights in Hugging Face's layout and names.
pub fn random_weights(tiny: Tiny, seed: u64) -> HashMap<String, Tensor> {
    let device = Device::Cpu;
    // candle's CPU randn is seeded globally; derive deterministic values from the seed
    // with a small generator of our own instead.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut random = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(values, shape, &device).unwrap()
    };
    let v = vocab_size();
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        random(&[v, HIDDEN], 1.0),
    );
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        w.insert(
            format!("{p}.input_layernorm.weight"),
            (random(&[HIDDEN], 0.1) + 1.0).unwrap(),
        );
        w.insert(
            format!("{p}.post_attention_layernorm.weight"),
            (random(&[HIDDEN], 0.1) + 1.0).unwrap(),
        );
        w.insert(
            format!("{p}.self_attn.q_proj.weight"),
            random(&[HIDDEN, HIDDEN], 0.2),
        );
        w.insert(
            format!("{p}.self_attn.k_proj.weight"),
            random(&[KV_HEADS * HEAD_DIM, HIDDEN], 0.2),
        );
        w.insert(
            format!("{p}.self_attn.v_proj.weight"),
            random(&[KV_HEADS * HEAD_DIM, HIDDEN], 0.2),
        );
        w.insert(
            format!("{p}.self_attn.o_proj.weight"),
            random(&[HIDDEN, HIDDEN], 0.2),
        );
        w.insert(
            format!("{p}.mlp.gate_proj.weight"),
            random(&[FFN, HIDDEN], 0.2),
        );
        w.insert(
            format!("{p}.mlp.up_proj.weight"),
            random(&[FFN, HIDDEN], 0.2),
        );
        w.insert(
            format!("{p}.mlp.down_proj.weight"),
            random(&[HIDDEN, FFN], 0.2),
        );
        if tiny.qwen2 {
            w.insert(format!("{p}.self_attn.q_proj.bias"), random(&[HIDDEN], 0.1));
            w.insert(
                format!("{p}.self_attn.k_proj.bias"),
                random(&[KV_HEADS * HEAD_DIM], 0.1),
            );
            w.insert(
                format!("{p}.self_attn.v_proj.bias"),
                random(&[KV_HEADS * HEAD_DIM], 0.1),
            );
        }
    }
    w.insert(
        "model.norm.weight".to_string(),
        (random(&[HIDDEN], 0.1) + 1.0).unwrap(),
    );
    if !tiny.tied {
        w.insert("lm_head.weight".to_string(), random(&[v, HIDDEN], 0.5));
    }
    w
}

/// Writes a safetensors model directory (config.json, model.safetensors, tokenizer.json).
pub fn write_safetensors(dir: &Path, tiny: Tiny, weights: &HashMap<String, Tensor>, dtype: DType) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": [if tiny.qwen2 { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": vocab_size(),
        "max_position_embeddings": CONTEXT,
        "rope_theta": THETA,
        "rms_norm_eps": EPS,
        "tie_word_embeddings": tiny.tied,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let converted: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&converted, dir.join("model.safetensors")).unwrap();
    write_tokenizer_json(&dir.join("tokenizer.json"));
}

pub fn write_tokenizer_json(path: &Path) {
    use tokenizers::models::bpe::{BPE, Vocab};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let tokens = vocabulary();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .unwrap();
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .add_special_tokens([
            tokenizers::AddedToken::from("<|im_start|>", true),
            tokenizers::AddedToken::from("<|im_end|>", true),
        ])
        .unwrap();
    tokenizer.save(path, false).unwrap();
}

/// llama.cpp's layout of a llama q/k weight: each head's rows reordered from Hugging
/// Face's halves to interleaved pairs.
pub fn permute_for_gguf(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    w.reshape((heads, 2, out / heads / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

/// Writes a llama GGUF file of the weights, its tensors quantized as `dtype` (norms stay
/// f32), with a byte-level tokenizer in the metadata. `skip` leaves one tensor out.
pub fn write_gguf(
    path: &Path,
    weights: &HashMap<String, Tensor>,
    dtype: GgmlDType,
    skip: Option<&str>,
) {
    use gguf_file::Value;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, t: &Tensor, quantize: bool| {
        if skip == Some(name.as_str()) {
            return;
        }
        let q = QTensor::quantize(t, if quantize { dtype } else { GgmlDType::F32 }).unwrap();
        tensors.push((name, q));
    };
    add(
        "token_embd.weight".into(),
        &weights["model.embed_tokens.weight"],
        true,
    );
    for l in 0..LAYERS {
        let hf = |s: &str| &weights[&format!("model.layers.{l}.{s}")];
        add(
            format!("blk.{l}.attn_norm.weight"),
            hf("input_layernorm.weight"),
            false,
        );
        add(
            format!("blk.{l}.ffn_norm.weight"),
            hf("post_attention_layernorm.weight"),
            false,
        );
        add(
            format!("blk.{l}.attn_q.weight"),
            &permute_for_gguf(hf("self_attn.q_proj.weight"), HEADS),
            true,
        );
        add(
            format!("blk.{l}.attn_k.weight"),
            &permute_for_gguf(hf("self_attn.k_proj.weight"), KV_HEADS),
            true,
        );
        add(
            format!("blk.{l}.attn_v.weight"),
            hf("self_attn.v_proj.weight"),
            true,
        );
        add(
            format!("blk.{l}.attn_output.weight"),
            hf("self_attn.o_proj.weight"),
            true,
        );
        add(
            format!("blk.{l}.ffn_gate.weight"),
            hf("mlp.gate_proj.weight"),
            true,
        );
        add(
            format!("blk.{l}.ffn_up.weight"),
            hf("mlp.up_proj.weight"),
            true,
        );
        add(
            format!("blk.{l}.ffn_down.weight"),
            hf("mlp.down_proj.weight"),
            true,
        );
    }
    add(
        "output_norm.weight".into(),
        &weights["model.norm.weight"],
        false,
    );
    if let Some(head) = weights.get("lm_head.weight") {
        add("output.weight".into(), head, true);
    }
    let tokens = vocabulary();
    let n = tokens.len();
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.context_length", Value::U32(CONTEXT as u32)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.rope.freq_base", Value::F32(THETA)),
        ("llama.rope.dimension_count", Value::U32(HEAD_DIM as u32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(EPS as f32),
        ),
        ("llama.vocab_size", Value::U32(n as u32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(
                (0..n)
                    .map(|i| Value::I32(if i >= n - 2 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.merges", Value::Array(Vec::new())),
        ("tokenizer.ggml.bos_token_id", Value::U32(n as u32 - 2)),
        ("tokenizer.ggml.eos_token_id", Value::U32(n as u32 - 1)),
    ];
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs).unwrap();
}

pub fn open(path: &Path, format: ModelFormat) -> anyhow::Result<LoadedModel> {
    open_with(path, format, CpuMatmul::default())
}

/// The model on the CPU with the given kernels.
pub fn open_with(
    path: &Path,
    format: ModelFormat,
    kernels: CpuMatmul,
) -> anyhow::Result<LoadedModel> {
    let resolved = ResolvedModel {
        id: "tiny".into(),
        path: path.to_path_buf(),
        format,
    };
    let mut config = EngineConfig::new(resolved, DeviceChoice::Cpu);
    config.cpu_matmul = kernels;
    LoadedModel::open(&config)
}

fn prompt() -> Vec<u32> {
    vec![5, 17, 99, 3, 250, 42, 42, 7, 120]
}

/// `tokens` greedy tokens after `prompt`, with `model` split into the shards `ranges`
/// (every engine test that compares shards uses this).
pub fn greedy(
    model: &LoadedModel,
    ranges: &[(usize, usize)],
    prompt: &[u32],
    tokens: usize,
) -> Vec<u32> {
    let request = LocalRequest {
        prompt: prompt.to_vec(),
        max_tokens: tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
    };
    generate(model, ranges, &request, |_| {}).unwrap().tokens
}

const SPLITS: [&[(usize, usize)]; 4] = [
    &[(0, 5)],
    &[(0, 2), (2, 5)],
    &[(0, 4), (4, 5)],
    &[(0, 1), (1, 3), (3, 5)],
];

fn assert_shards_agree(model: &LoadedModel) {
    let reference = greedy(model, SPLITS[0], &prompt(), 16);
    assert_eq!(reference.len(), 16);
    for split in &SPLITS[1..] {
        assert_eq!(
            greedy(model, split, &prompt(), 16),
            reference,
            "split {split:?}"
        );
    }
}

/// Logits of the last position after running `tokens` from position 0, through the engine.
fn engine_logits(model: &LoadedModel, tokens: &[u32]) -> Vec<f32> {
    let id = format!("check-{}", tokens.len());
    let output = model
        .step(&id, 0, LAYERS, ShardInput::Tokens(tokens.to_vec()), 0)
        .unwrap();
    model.finish(&id);
    match output {
        ShardOutput::Logits(logits) => logits,
        ShardOutput::Hidden(_) => panic!("a full model returns logits"),
    }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_against_reference(
    model: &LoadedModel,
    w: &HashMap<String, Tensor>,
    tiny: Tiny,
    tolerance: f32,
) {
    let mut tokens = prompt();
    for _ in 0..4 {
        let ours = engine_logits(model, &tokens);
        let theirs = reference_logits(w, tiny, &tokens);
        let diff = max_difference(&ours, &theirs);
        assert!(
            diff < tolerance,
            "logits differ by {diff} after {} tokens",
            tokens.len()
        );
        tokens.push(exo::engine::serve::sampling::argmax(&ours));
    }
}

#[test]
fn safetensors_llama_f32_matches_the_plain_forward_and_its_shards_agree() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny {
        qwen2: false,
        tied: false,
    };
    let w = random_weights(tiny, 1);
    write_safetensors(dir.path(), tiny, &w, DType::F32);
    let model = open(dir.path(), ModelFormat::Safetensors).unwrap();
    check_against_reference(&model, &w, tiny, 1e-3);
    assert_shards_agree(&model);
}

#[test]
fn safetensors_qwen2_with_biases_and_tied_embeddings_matches_the_plain_forward() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny {
        qwen2: true,
        tied: true,
    };
    let w = random_weights(tiny, 2);
    write_safetensors(dir.path(), tiny, &w, DType::F32);
    let model = open(dir.path(), ModelFormat::Safetensors).unwrap();
    assert_eq!(
        model.config().architecture,
        exo::engine::model::config::Architecture::Qwen2
    );
    check_against_reference(&model, &w, tiny, 1e-3);
    assert_shards_agree(&model);
}

#[test]
fn safetensors_in_f16_and_bf16_load_and_their_shards_agree() {
    for dtype in [DType::F16, DType::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let tiny = Tiny {
            qwen2: false,
            tied: false,
        };
        let w = random_weights(tiny, 3);
        write_safetensors(dir.path(), tiny, &w, dtype);
        let model = open(dir.path(), ModelFormat::Safetensors).unwrap();
        // The weights were rounded to half precision: compare with the same rounding.
        let rounded: HashMap<String, Tensor> = w
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap(),
                )
            })
            .collect();
        check_against_reference(&model, &rounded, tiny, 1e-3);
        assert_shards_agree(&model);
    }
}

#[test]
fn gguf_f32_with_llama_cpp_layout_gives_the_same_logits_as_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny {
        qwen2: false,
        tied: false,
    };
    let w = random_weights(tiny, 4);
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, &w, GgmlDType::F32, None);
    let model = open(&gguf, ModelFormat::Gguf).unwrap();
    // Interleaved rope on permuted weights equals rotate-half on the original ones.
    check_against_reference(&model, &w, tiny, 1e-3);
    assert_shards_agree(&model);
    // The tokenizer came from the GGUF metadata.
    let tokenizer = model.tokenizer();
    let ids = tokenizer.encode("hi <|im_end|>").unwrap();
    assert_eq!(*ids.last().unwrap(), vocab_size() as u32 - 1);
    assert_eq!(tokenizer.decode(&ids).unwrap(), "hi ");
}

#[test]
fn gguf_q8_0_runs_and_its_shards_agree_with_tied_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny {
        qwen2: false,
        tied: true,
    };
    let w = random_weights(tiny, 5);
    let gguf = dir.path().join("tiny-q8.gguf");
    write_gguf(&gguf, &w, GgmlDType::Q8_0, None);
    // With f32 activations the engine must match the plain forward over the weights as
    // quantized (matrices rounded through Q8_0, vectors exact) as closely as the f32
    // models do; 16-bit activations add their rounding (at most 1/32766 of each group's
    // largest value per activation), amplified through five random layers; the default
    // 8-bit ones (1/254, llama.cpp's) 129 times as much: 0.24 measured, allowed 0.6.
    let rounded: HashMap<String, Tensor> = w
        .iter()
        .map(|(k, t)| {
            let t = if t.rank() == 2 {
                QTensor::quantize(t, GgmlDType::Q8_0)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap()
            } else {
                t.clone()
            };
            (k.clone(), t)
        })
        .collect();
    let exact = open_with(&gguf, ModelFormat::Gguf, CpuMatmul::F32).unwrap();
    check_against_reference(&exact, &rounded, tiny, 1e-3);
    let int16 = open_with(&gguf, ModelFormat::Gguf, CpuMatmul::Int16).unwrap();
    check_against_reference(&int16, &rounded, tiny, 2e-2);
    let model = open(&gguf, ModelFormat::Gguf).unwrap();
    check_against_reference(&model, &rounded, tiny, 0.6);
    assert_shards_agree(&model);
}
