//! models/registry.json: the models people run, honest about what was verified, and
//! checked when read.

use exo::catalog::tensor_manifest::builtin_manifest;
use exo::catalog::{Catalog, WeightFormat, build_manifest};

/// The models issue 9 asks for, by their default variant's id.
const WANTED: &[&str] = &[
    "llama-3.2-1b-instruct",
    "llama-3.2-3b-instruct",
    "llama-3.1-8b-instruct",
    "llama-3.1-70b-instruct",
    "qwen2.5-0.5b-instruct",
    "qwen2.5-1.5b-instruct",
    "qwen2.5-7b-instruct",
    "qwen2.5-14b-instruct",
    "qwen2.5-32b-instruct",
    "qwen2.5-72b-instruct",
    "qwen3-0.6b",
    "qwen3-1.7b",
    "qwen3-4b",
    "qwen3-8b",
    "qwen3-14b",
    "qwen3-32b",
    "mistral-7b-instruct-v0.3",
    "gemma-3-1b-it",
    "gemma-3-4b-it",
    "gemma-3-12b-it",
    "gemma-3-27b-it",
    "phi-3.5-mini-instruct",
    "deepseek-r1-distill-qwen-1.5b",
    "deepseek-r1-distill-qwen-7b",
    "deepseek-r1-distill-qwen-14b",
    "deepseek-r1-distill-qwen-32b",
];

#[test]
fn the_registry_lists_the_models_people_run_in_q4_k_m_and_q8_0() {
    let catalog = Catalog::builtin();
    assert_eq!(catalog.default, "smollm2-135m");
    for id in WANTED {
        let entry = catalog.require(id).unwrap();
        assert_eq!(entry.quantization, "Q4_K_M", "{id}");
        assert_eq!(entry.format, WeightFormat::Gguf, "{id}");
        let q8 = catalog.require(&format!("{id}-q8_0")).unwrap();
        assert_eq!((q8.layers, q8.format), (entry.layers, WeightFormat::Gguf));
        assert!(
            ["llama", "qwen2", "qwen3", "gemma3", "phi3"].contains(&entry.architecture.as_str()),
            "{id}: {}",
            entry.architecture
        );
        let source = entry.huggingface.as_ref().unwrap();
        assert!(source.repo.contains('/') && !source.revision.is_empty());
    }
    // 70B-class Q8_0 files are too big for one Hub file: split in parts.
    for id in ["llama-3.1-70b-instruct-q8_0", "qwen2.5-72b-instruct-q8_0"] {
        let entry = catalog.require(id).unwrap();
        assert!(entry.is_split() && entry.files.len() == 2, "{id}");
        assert!(entry.files[1].path.ends_with("-00002-of-00002.gguf"));
    }
    // Families that publish safetensors have them too, read through their index.
    let st = catalog.require("qwen2.5-7b-instruct-bf16").unwrap();
    assert_eq!(st.format, WeightFormat::Safetensors);
    assert_eq!(st.index.as_deref(), Some("model.safetensors.index.json"));
}

#[test]
fn only_files_fetched_here_are_marked_verified_and_their_manifests_match() {
    let catalog = Catalog::builtin();
    let verified: Vec<&str> = catalog
        .models
        .iter()
        .filter(|m| m.verified)
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(
        verified,
        ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]
    );
    for id in verified {
        let entry = catalog.require(id).unwrap();
        let file = &entry.files[0];
        let manifest = builtin_manifest(file.manifest.as_deref().unwrap()).unwrap();
        assert_eq!(
            Some(manifest.sha256.as_str()),
            file.sha256.as_deref(),
            "{id}"
        );
        assert_eq!(Some(manifest.size), file.size, "{id}");
        assert!(
            entry.python_package.is_some(),
            "{id} is fetched through pip here"
        );
    }
    let gemma = catalog.require("gemma3-270m").unwrap();
    assert!(!gemma.instruct && gemma.layers == 18 && gemma.architecture == "gemma3");
    assert_eq!(gemma.python_package.as_ref().unwrap().parts.len(), 4);
    let qwen = catalog.require("qwen2.5-coder-0.5b").unwrap();
    assert!(qwen.instruct && qwen.layers == 24 && qwen.architecture == "qwen2");
    assert_eq!(qwen.python_package.as_ref().unwrap().parts.len(), 6);
    // No unverified entry claims a size it never read.
    for entry in catalog.models.iter().filter(|m| !m.verified) {
        assert!(entry.files.iter().all(|f| f.size.is_none()), "{}", entry.id);
    }
}

#[test]
fn the_default_models_manifest_is_the_file_on_disk() {
    let path = super::support::default_model();
    let built = build_manifest(path).unwrap();
    let catalog = Catalog::builtin();
    let file = &catalog.require("smollm2-135m").unwrap().files[0];
    assert_eq!(
        built,
        builtin_manifest(file.manifest.as_deref().unwrap()).unwrap()
    );
    // And it reads back from its own JSON.
    assert_eq!(
        exo::catalog::TensorManifest::parse(&built.to_json()).unwrap(),
        built
    );
}

#[test]
fn memory_is_the_weights_plus_a_kv_reserve() {
    let catalog = Catalog::builtin();
    let smollm = catalog.require("smollm2-135m").unwrap().memory_need();
    assert!(smollm.weights_exact && smollm.weights == 98_362_432);
    // 2 (K, V) × 30 layers × 3 kv heads × 64 × 4096 tokens × 2 bytes.
    assert_eq!(smollm.kv_reserve, 2 * 30 * 3 * 64 * 4096 * 2);
    assert_eq!(smollm.total, smollm.weights + smollm.kv_reserve);
    let llama70 = catalog
        .require("llama-3.1-70b-instruct")
        .unwrap()
        .memory_need();
    assert!(!llama70.weights_exact);
    assert!(
        (38e9..48e9).contains(&(llama70.weights as f64)),
        "{llama70:?}"
    );
    let half = catalog
        .require("llama-3.1-70b-instruct")
        .unwrap()
        .memory_need_for_layers(0..40);
    assert!(half.total.abs_diff(llama70.total / 2) <= 1, "{half:?}");
}

#[test]
fn a_malformed_registry_is_a_clear_error() {
    let text = include_str!("../../models/registry.json");
    let cases = [
        (
            text.replacen("\"schema_version\": 2", "\"schema_version\": 1", 1),
            "schema version 1",
        ),
        (
            text.replacen("\"default\": \"smollm2-135m\"", "\"default\": \"nope\"", 1),
            "'nope' is not in it",
        ),
        (
            text.replacen("\"parameters\": \"135M\"", "\"parameters\": \"lots\"", 1),
            "should read like",
        ),
        (
            text.replacen("\"id\": \"qwen3-8b\"", "\"id\": \"qwen3-4b\"", 1),
            "twice",
        ),
        (
            text.replacen(
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                "b179",
                1,
            ),
            "not a hex sha256",
        ),
        (
            text.replacen(
                "\"default_variant\": \"Q4_1\"",
                "\"default_variant\": \"Q9\"",
                1,
            ),
            "default variant Q9",
        ),
    ];
    for (broken, wanted) in cases {
        assert_ne!(broken, text, "the case for '{wanted}' changed nothing");
        let error = Catalog::parse(&broken).unwrap_err();
        assert!(format!("{error:#}").contains(wanted), "{wanted}: {error:#}");
    }
}
