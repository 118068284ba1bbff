//! Mistral: the llama layout with a sliding window on every layer, against
//! candle-transformers' `mistral`.
//!
//! The window (8) is shorter than the 20-token prompt, so most queries lose keys to it.
//! The engine follows Hugging Face and llama.cpp: a query at position i sees keys j with
//! i − j < window. candle's mistral masks j + window < i, one key wider, so its reference
//! is given a window one smaller; and its cached path applies no window at all (a lone
//! token attends to its whole cache), so it is only run from scratch on every prefix.
//!
//! The GGUF file records the window as `llama.attention.sliding_window`. candle's quantized
//! llama reads no window, so it is compared with our engine on a prompt no longer than
//! the window, where the window changes nothing: that checks the q/k permutation into
//! llama.cpp's interleaved layout against a reader other than ours.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::mistral::{Config, Model};
use candle_transformers::models::quantized_llama::ModelWeights;
use serde_json::json;

use super::generate::Family;
use super::{Candle, Written, check_shards_of, prompt, read_gguf, tiny_config};

const WINDOW: usize = 8;

pub(super) fn config() -> serde_json::Value {
    tiny_config(
        "MistralForCausalLM",
        "mistral",
        json!({
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "sliding_window": WINDOW,
            "hidden_act": "silu",
            "tie_word_embeddings": false
        }),
    )
}

/// candle's mistral, its mask made Hugging Face's; its cached path drops the window (see
/// the file's notes).
fn candle_mistral(written: &Written) -> Candle<Model> {
    let mut config: Config = serde_json::from_value(written.model.config.clone()).unwrap();
    // candle's mask keeps window + 1 keys; Hugging Face's keeps window.
    config.sliding_window = Some(WINDOW - 1);
    let vb = VarBuilder::from_tensors(written.model.weights.clone(), DType::F32, &Device::Cpu);
    Candle::without_cached_path(Model::new(&config, vb).unwrap())
}

#[test]
fn mistral_sliding_window_matches_candle_transformers_mistral() {
    let written = Written::new(Family::Mistral, config(), 41);
    assert_eq!(
        written.open_hf(Default::default()).config().sliding_window,
        Some(WINDOW)
    );
    let tokens = written.sequence(&prompt(20), 4);
    written.check_reference(&mut candle_mistral(&written), &tokens, 20);
}

#[test]
fn mistral_gguf_matches_the_safetensors_and_candle_quantized_llama() {
    let written = Written::new(Family::Mistral, config(), 41);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_gguf_matches_safetensors(&tokens, 20);
    // Within the window, candle's quantized llama computes the same model.
    let short = written.sequence(&prompt(5), WINDOW - 5);
    assert_eq!(short.len(), WINDOW);
    // candle's quantized llama on the GGUF file: no window, interleaved rope.
    let (content, mut file) = read_gguf(&written.gguf);
    let model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let mut reference = Candle::new(model);
    written.check_gguf_reference(&mut reference, &short, 5);
}

#[test]
fn mistral_shards_agree() {
    check_shards_of(&Written::new(Family::Mistral, config(), 41));
}
