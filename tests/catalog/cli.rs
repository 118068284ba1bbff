//! `exo models list` and `exo models fetch --layers` as a user runs them, the fetch
//! against the fake hub through HF_ENDPOINT.

use std::process::Command;

use exo::catalog::Catalog;

use super::fixtures::hub_with_smollm;
use super::support::{assert_success, default_model, exo_bin};

/// `exo` with a clean Hugging Face environment pointing at `endpoint`.
fn exo(endpoint: &str, models: &std::path::Path, hf_home: &std::path::Path) -> Command {
    let mut command = Command::new(exo_bin());
    command
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .env_remove("HF_TOKEN")
        .env("EXO_MODELS_DIR", models)
        .env_remove("RUST_LOG");
    command
}

fn json_list(command: &mut Command) -> Vec<serde_json::Value> {
    let output = command.args(["models", "list", "--json"]).output().unwrap();
    assert_success(&output);
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn list_shows_every_variant_with_memory_presence_and_support() {
    let models = tempfile::tempdir().unwrap();
    let rows = json_list(&mut exo("http://127.0.0.1:9", models.path(), models.path()));
    assert_eq!(rows.len(), Catalog::builtin().models.len());
    let qwen = rows
        .iter()
        .find(|r| r["id"] == "qwen2.5-7b-instruct")
        .unwrap();
    assert_eq!(qwen["family"], "qwen2.5");
    assert_eq!(qwen["quantization"], "Q4_K_M");
    assert_eq!(qwen["present"]["kind"], "nothing");
    assert_eq!(qwen["can_run"], true);
    let memory = &qwen["memory"];
    assert!(memory["total"].as_u64().unwrap() > memory["weights"].as_u64().unwrap());
    assert_eq!(memory["weights_exact"], false);

    let output = exo("http://127.0.0.1:9", models.path(), models.path())
        .args(["models", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("smollm2-135m*") && text.contains("KV cache reserve"),
        "{text}"
    );
}

#[test]
fn fetch_layers_by_hand_then_list_shows_them() {
    let (hub, entry) = hub_with_smollm();
    let models = tempfile::tempdir().unwrap();
    let hf_home = tempfile::tempdir().unwrap();

    let output = exo(&hub.endpoint, models.path(), hf_home.path())
        .args(["models", "fetch", "smollm2-135m", "--layers", "0..3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(
        printed,
        models
            .path()
            .join("smollm2-135m")
            .join(&entry.files[0].path)
            .display()
            .to_string()
    );
    // Not a terminal: plain progress lines, ending with the outcome.
    assert!(
        stderr.contains("fetch smollm2-135m (layers 0..3)") && stderr.contains(" done"),
        "{stderr}"
    );

    let rows = json_list(&mut exo(&hub.endpoint, models.path(), hf_home.path()));
    let row = rows.iter().find(|r| r["id"] == "smollm2-135m").unwrap();
    assert_eq!(row["present"]["kind"], "layers");
    assert_eq!(
        row["present"]["layers"],
        serde_json::json!([{"start": 0, "end": 3}])
    );
    assert_eq!(row["present"]["tensor_check"], "sha256");

    let output = exo(&hub.endpoint, models.path(), hf_home.path())
        .args(["models", "fetch", "smollm2-135m", "--layers", "5..2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("empty"));
}

#[test]
fn a_model_fetched_in_two_layer_ranges_answers_like_the_whole_file() {
    let (hub, _) = hub_with_smollm();
    let models = tempfile::tempdir().unwrap();
    let hf_home = tempfile::tempdir().unwrap();
    for layers in ["0..15", "15..30"] {
        let output = exo(&hub.endpoint, models.path(), hf_home.path())
            .args(["models", "fetch", "smollm2-135m", "--layers", layers])
            .output()
            .unwrap();
        assert_success(&output);
    }
    // The engine reads the sparse file with its ordinary GGUF reader, and answers as it
    // does from the whole file.
    let answer = |model: &str, models: &std::path::Path| {
        let output = exo(&hub.endpoint, models, hf_home.path())
            .args(["generate", "--model", model, "--device", "cpu"])
            .args(["--max-tokens", "12"])
            .args(["--prompt", "What is the capital of Germany?"])
            .output()
            .unwrap();
        assert_success(&output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let sparse = answer("smollm2-135m", models.path());
    assert!(sparse.contains("Berlin"), "{sparse}");
    let whole = answer(default_model().to_str().unwrap(), models.path());
    assert_eq!(sparse, whole);
}

#[test]
fn the_token_comes_from_hf_token_or_the_file_in_hf_home() {
    let (hub, _) = hub_with_smollm();
    hub.require_token("hf_from_the_test");
    let hf_home = tempfile::tempdir().unwrap();
    let fetch = |models: &std::path::Path, token: Option<&str>| {
        let mut command = exo(&hub.endpoint, models, hf_home.path());
        if let Some(token) = token {
            command.env("HF_TOKEN", token);
        }
        command
            .args(["models", "fetch", "smollm2-135m", "--layers", "0..1"])
            .output()
            .unwrap()
    };

    let models = tempfile::tempdir().unwrap();
    let refused = fetch(models.path(), None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("HF_TOKEN"));
    assert!(
        fetch(models.path(), Some("hf_from_the_test"))
            .status
            .success()
    );

    // `huggingface-cli login` writes $HF_HOME/token.
    std::fs::write(hf_home.path().join("token"), "hf_from_the_test\n").unwrap();
    let models = tempfile::tempdir().unwrap();
    let output = fetch(models.path(), None);
    assert_success(&output);
}
