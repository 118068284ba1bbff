//! Every family against an independent reference forward: candle-transformers' models.
//!
//! Each family's test generates a tiny random model in Hugging Face layout with the
//! family's special features switched on so that they matter (see each file), then:
//! - runs candle-transformers' non-quantized model of that family on the safetensors (f32,
//!   CPU) and our engine with each CPU kernel choice, and compares the logits of the last
//!   position after a ~20-token prompt and after each of a few decoded tokens, against the
//!   reference run from scratch on every prefix and, where the reference's own cached
//!   path implements the family's attention, against that path too;
//! - converts the model to GGUF as llama.cpp does ([`generate::Gguf`]) and checks that the
//!   engine gives the same logits on both files, and the same as candle's quantized model
//!   where one exists that implements the family's features;
//! - checks that 1, 2 and 3 shards generate the same greedy tokens.
//!
//! candle-transformers' models differ from Hugging Face's in places (masks one key wider,
//! windows dropped on the cached path, a scale or a rope factor not applied, a prompt path
//! that fails): each family's file says where, and how its reference is run so that it
//! computes the Hugging Face model. Where the engine runs on candle's kernels (an f32
//! cache), it must match the reference to f32 rounding; on ours (an f16 cache, as
//! llama.cpp's), within the tolerance that rounding allows.

mod bad_input;
mod gemma3;
mod gemma_real;
pub mod generate;
mod llama3;
mod mistral;
mod phi3;
mod qwen2;
mod qwen3;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};
use candle_transformers::models;
use exo::catalog::ModelFormat;
use exo::engine::serve::sampling::argmax;
use exo::engine::{CpuMatmul, LoadedModel, ShardInput, ShardOutput};
use serde_json::Value as Json;

use crate::synthetic::open_with;
use generate::{Family, Model};

/// The unit roundoff of f16: the largest relative error of rounding an f32 to it.
const F16_ROUNDOFF: f32 = 1.0 / 2048.0;

/// The largest difference allowed between our logits and an f32 computation of the same
/// model, whose logits reach `scale` in size, with our engine on `kernels`.
///
/// On candle's kernels the engine's cache is f32, and it computes what the reference
/// computes up to the order of f32 sums and the f32 rounding of folded constants (Gemma's
/// +1, LongRoPE's attention factor): about 1e-6 of the logits' size.
///
/// Our kernels cache keys and values in f16, as llama.cpp does, on purpose: each cached
/// value moves by at most u = 2⁻¹¹ of itself. The logits, a smooth function of the cached
/// values, move by about u times their own size times the gain from the cache to the
/// logits (through a softmax, whose weights move by u·|score| for scores of a few units,
/// and a few layers of residual stream): a few. We allow 4·u·scale, five times the most
/// measured (0.8·u·scale, Llama 3 and Qwen3). A wrong rope layout, norm, scale or window
/// moves the logits by 0.5 (Gemma's query scale, where 4·u·scale is 0.06) to 30 (Gemma's
/// norm offset); even a rope base 1% off (0.027 where 4·u·scale is 0.017) or scores 1% too
/// large (0.10 against 0.04) fail.
pub fn tolerance(kernels: CpuMatmul, scale: f32) -> f32 {
    match kernels {
        CpuMatmul::Candle => 1e-5 * scale,
        CpuMatmul::F32 | CpuMatmul::Int8 | CpuMatmul::Int16 => 4.0 * F16_ROUNDOFF * scale,
    }
}

/// Our engine on a GGUF file against our engine on the same weights in safetensors, with
/// the f16 cache: a last-bit difference in a key or value (a head's dot products summed
/// in another order: interleaved pairs against halves) can flip its f16 rounding, one
/// step of 2u in that value; as few values flip, the logits move by far less than u of
/// their size (measured: 0.06·u·scale). With the f32 cache, [`tolerance`]'s f32 bound.
fn gguf_tolerance(kernels: CpuMatmul, scale: f32) -> f32 {
    match kernels {
        CpuMatmul::Candle => tolerance(kernels, scale),
        CpuMatmul::F32 | CpuMatmul::Int8 | CpuMatmul::Int16 => F16_ROUNDOFF * scale,
    }
}

/// The largest logit in size, over every position compared.
fn scale(logits: &[Vec<f32>]) -> f32 {
    logits.iter().flatten().fold(0f32, |m, v| m.max(v.abs()))
}

/// Every way our engine runs a model on the CPU: our kernels in f32 and with 8- and 16-bit
/// integer activations (all use f32 matmuls on dense weights), and candle's kernels.
pub const KERNELS: [CpuMatmul; 4] = [
    CpuMatmul::F32,
    CpuMatmul::Int8,
    CpuMatmul::Int16,
    CpuMatmul::Candle,
];

/// A reference implementation of a family (candle-transformers' model).
pub trait Reference {
    /// The logits of the last of `tokens`, run from an empty cache in one pass.
    fn full(&mut self, tokens: &[u32]) -> Vec<f32>;

    /// The logits after `tokens[..prompt]` in one pass and then after each later token
    /// fed alone, through the reference's own cache. None where that path does not
    /// compute the family's attention (see the family's file).
    fn cached(&mut self, tokens: &[u32], prompt: usize) -> Option<Vec<Vec<f32>>>;
}

/// A candle-transformers model as the family tests drive it: tokens in at an offset onto
/// its cache, logits out; and its cache emptied.
pub trait CandleModel {
    fn forward(&mut self, input: &Tensor, offset: usize) -> candle_core::Result<Tensor>;
    fn clear(&mut self);
}

/// candle's models that take (tokens, offset) and empty their cache with
/// `clear_kv_cache`.
macro_rules! candle_model {
    ($($model:ty),* $(,)?) => {$(
        impl CandleModel for $model {
            fn forward(&mut self, input: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
                <$model>::forward(self, input, offset)
            }
            fn clear(&mut self) {
                self.clear_kv_cache();
            }
        }
    )*};
}

candle_model!(
    models::gemma3::Model,
    models::mistral::Model,
    models::phi3::Model,
    models::qwen2::ModelForCausalLM,
    models::qwen3::ModelForCausalLM,
    models::quantized_llama::ModelWeights,
    models::quantized_qwen2::ModelWeights,
    models::quantized_qwen3::ModelWeights,
);

/// The reference adapter of every family: a candle model run from an empty cache in one
/// pass, and through its own cache where that path computes the family's attention.
pub struct Candle<M> {
    model: M,
    /// Whether the cached path is a reference too.
    cached: bool,
    /// Every token goes in alone, a prompt too (a model whose prompt path fails: then
    /// `full` runs the cached path).
    one_at_a_time: bool,
}

impl<M: CandleModel> Candle<M> {
    pub fn new(model: M) -> Self {
        Candle {
            model,
            cached: true,
            one_at_a_time: false,
        }
    }

    /// A model whose cached path does not compute the family's attention.
    pub fn without_cached_path(model: M) -> Self {
        Candle {
            cached: false,
            ..Candle::new(model)
        }
    }

    /// A model fed one token at a time.
    pub fn one_token_at_a_time(model: M) -> Self {
        Candle {
            cached: false,
            one_at_a_time: true,
            ..Candle::new(model)
        }
    }
}

impl<M: CandleModel> Reference for Candle<M> {
    fn full(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.model.clear();
        if !self.one_at_a_time {
            return logits(self.model.forward(&input(tokens), 0));
        }
        let mut last = Vec::new();
        for (position, &t) in tokens.iter().enumerate() {
            last = logits(self.model.forward(&input(&[t]), position));
        }
        last
    }

    fn cached(&mut self, tokens: &[u32], prompt: usize) -> Option<Vec<Vec<f32>>> {
        if !self.cached {
            return None;
        }
        self.model.clear();
        let mut out = vec![logits(self.model.forward(&input(&tokens[..prompt]), 0))];
        for (i, &t) in tokens[prompt..].iter().enumerate() {
            out.push(logits(self.model.forward(&input(&[t]), prompt + i)));
        }
        Some(out)
    }
}

/// A one-row batch of token ids for a candle model.
pub fn input(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// A candle model's logits as one vector (they come as (1, vocab) or (1, 1, vocab)).
pub fn logits(t: candle_core::Result<Tensor>) -> Vec<f32> {
    t.unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// The shape every generated family model starts from (64 wide, 4 layers of 4 heads over
/// 2 key/value heads, 128 positions), with the family's own keys on top.
pub fn tiny_config(architecture: &str, model_type: &str, family: Json) -> Json {
    let mut config = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 4,
        "vocab_size": generate::vocab_size(),
        "max_position_embeddings": 128,
    });
    for (key, value) in family.as_object().expect("a JSON object") {
        config[key] = value.clone();
    }
    config
}

/// The 20-token prompt of every family test: distinct, spread over the vocabulary.
pub fn prompt(len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + 11) % 256).collect()
}

/// A generated model written in both formats: `dir/hf` (safetensors) and `dir/model.gguf`.
pub struct Written {
    pub model: Model,
    _dir: tempfile::TempDir,
    pub hf: PathBuf,
    pub gguf: PathBuf,
}

impl Written {
    /// The generated weights, for a candle model built as the reference (f32, CPU).
    pub fn var_builder(&self) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_tensors(
            self.model.weights.clone(),
            candle_core::DType::F32,
            &Device::Cpu,
        )
    }

    /// The config, read as a candle model's own config type.
    pub fn candle_config<C: serde::de::DeserializeOwned>(&self) -> C {
        serde_json::from_value(self.model.config.clone()).unwrap()
    }

    /// Checks `reference` on the 20-token prompt and then 4 greedy tokens.
    pub fn check_reference_on_the_prompt(&self, reference: &mut dyn Reference) {
        let tokens = self.sequence(&prompt(20), 4);
        self.check_reference(reference, &tokens, 20);
    }

    pub fn new(family: Family, config: Json, seed: u64) -> Written {
        let dir = tempfile::tempdir().unwrap();
        let model = Model::generate(family, config, seed);
        let hf = dir.path().join("hf");
        model.write_safetensors(&hf);
        let gguf = dir.path().join("model.gguf");
        model.to_gguf().write(&gguf);
        Written {
            model,
            _dir: dir,
            hf,
            gguf,
        }
    }

    pub fn open_hf(&self, kernels: CpuMatmul) -> LoadedModel {
        open_with(&self.hf, ModelFormat::Safetensors, kernels).unwrap()
    }

    pub fn open_gguf(&self, kernels: CpuMatmul) -> LoadedModel {
        open_with(&self.gguf, ModelFormat::Gguf, kernels).unwrap()
    }

    /// The prompt followed by `steps` tokens our engine picks greedily (f32 kernels): the
    /// sequence every comparison of this model runs.
    pub fn sequence(&self, prompt: &[u32], steps: usize) -> Vec<u32> {
        let model = self.open_hf(CpuMatmul::F32);
        let mut tokens = prompt.to_vec();
        for _ in 0..steps {
            let last = ours(&model, &tokens, tokens.len()).pop().unwrap();
            tokens.push(argmax(&last));
        }
        tokens
    }

    /// Our engine with every kernel choice against `reference`, over `tokens` (the first
    /// `prompt` of them as one step), within [`tolerance`]: against the reference run from
    /// scratch on each prefix, and against its cached path where it has one.
    pub fn check_reference(&self, reference: &mut dyn Reference, tokens: &[u32], prompt: usize) {
        let family = self.model.family;
        let full: Vec<Vec<f32>> = (prompt..=tokens.len())
            .map(|end| reference.full(&tokens[..end]))
            .collect();
        let scale = scale(&full);
        eprintln!("{family:?}: the reference's logits reach {scale:.1}");
        let cached = reference.cached(tokens, prompt);
        if let Some(cached) = &cached {
            // The reference agrees with itself, or one of its paths is not the model.
            let own = max_difference(&full, cached);
            let bound = tolerance(CpuMatmul::Candle, scale);
            assert!(own < bound, "the reference's cached path differs by {own}");
        }
        for kernels in KERNELS {
            let ours = ours(&self.open_hf(kernels), tokens, prompt);
            let runs = std::iter::once(("run from scratch", &full))
                .chain(cached.as_ref().map(|cached| ("cached path", cached)));
            for (what, reference) in runs {
                let diff = max_difference(&ours, reference);
                eprintln!(
                    "{family:?} safetensors, {kernels} kernels: max |Δlogit| {diff:.2e} vs the reference's {what}"
                );
                assert!(
                    diff < tolerance(kernels, scale),
                    "{family:?} with {kernels} kernels differs from the reference's {what} by {diff}"
                );
            }
        }
    }

    /// Our engine on the GGUF file against our engine on the safetensors, kernel by kernel
    /// (the GGUF tensors are f32, so every kernel runs f32 matmuls on both).
    pub fn check_gguf_matches_safetensors(&self, tokens: &[u32], prompt: usize) {
        for kernels in KERNELS {
            let gguf = self.open_gguf(kernels);
            let hf = self.open_hf(kernels);
            assert_eq!(gguf.config().architecture, hf.config().architecture);
            let expected = ours(&hf, tokens, prompt);
            let diff = max_difference(&ours(&gguf, tokens, prompt), &expected);
            eprintln!(
                "{:?} GGUF vs safetensors, {kernels} kernels: max |Δlogit| {diff:.2e}",
                self.model.family
            );
            assert!(
                diff < gguf_tolerance(kernels, scale(&expected)),
                "{:?}: the GGUF file gives logits {diff} away from the safetensors",
                self.model.family
            );
        }
    }

    /// Our engine on the GGUF file (our f32 kernels, and candle's) against a reference
    /// reading that file (candle's quantized model, f32 on these f32 tensors).
    pub fn check_gguf_reference(
        &self,
        reference: &mut dyn Reference,
        tokens: &[u32],
        prompt: usize,
    ) {
        let family = self.model.family;
        let full: Vec<Vec<f32>> = (prompt..=tokens.len())
            .map(|end| reference.full(&tokens[..end]))
            .collect();
        let cached = reference.cached(tokens, prompt);
        for kernels in [CpuMatmul::F32, CpuMatmul::Candle] {
            let ours = ours(&self.open_gguf(kernels), tokens, prompt);
            let mut diff = max_difference(&ours, &full);
            if let Some(cached) = &cached {
                diff = diff.max(max_difference(&ours, cached));
            }
            eprintln!(
                "{family:?} GGUF, {kernels} kernels, vs candle's quantized model: max |Δlogit| {diff:.2e}"
            );
            assert!(
                diff < tolerance(kernels, scale(&full)),
                "{family:?}, {kernels} kernels: {diff}"
            );
        }
    }
}

/// Logits after `tokens[..prompt]` (one step) and after each later token (one step each),
/// through every layer of our engine.
pub fn ours(model: &LoadedModel, tokens: &[u32], prompt: usize) -> Vec<Vec<f32>> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = format!("families-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let layers = model.config().n_layers;
    let steps = std::iter::once(&tokens[..prompt]).chain(tokens[prompt..].chunks(1));
    let mut position = 0;
    let mut out = Vec::new();
    for step in steps {
        let output = model
            .step(&id, 0, layers, ShardInput::Tokens(step.to_vec()), position)
            .unwrap();
        match output {
            ShardOutput::Logits(logits) => out.push(logits),
            ShardOutput::Hidden(_) => panic!("a full model returns logits"),
        }
        position += step.len();
    }
    model.finish(&id);
    out
}

/// The largest absolute difference between two lists of logit vectors.
pub fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Greedy tokens of `model` split into `shards` even shards.
pub fn greedy(model: &LoadedModel, shards: usize, prompt: &[u32], tokens: usize) -> Vec<u32> {
    crate::synthetic::greedy(model, &model.even_ranges(shards).unwrap(), prompt, tokens)
}

/// 1, 2 and 3 shards of `model` generate the same 16 greedy tokens.
pub fn check_shards(model: &LoadedModel, prompt: &[u32]) {
    let one = greedy(model, 1, prompt, 16);
    assert_eq!(one.len(), 16);
    for shards in [2, 3] {
        assert_eq!(greedy(model, shards, prompt, 16), one, "{shards} shards");
    }
}

/// 1, 2 and 3 shards agree on the safetensors and the GGUF file of a family, with the
/// default kernels.
pub fn check_shards_of(written: &Written) {
    let prompt = prompt(20);
    check_shards(&written.open_hf(CpuMatmul::default()), &prompt);
    check_shards(&written.open_gguf(CpuMatmul::default()), &prompt);
}

/// Opens a GGUF file for one of candle's quantized models.
pub fn read_gguf(path: &Path) -> (candle_core::quantized::gguf_file::Content, std::fs::File) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    (content, file)
}
