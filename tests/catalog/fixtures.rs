//! Files the tests serve (a small GGUF they write with candle, safetensors checkpoints,
//! the real default model), registry entries pointing at the fake hub, a fetcher tuned for
//! tests (small chunks, no waits), and an independent reading of what a layer range needs
//! (from candle's GGUF reader, not the code under test).

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use exo::catalog::header::HeaderLimits;
use exo::catalog::range_download::DownloadOptions;
use exo::catalog::registry::AttentionShape;
use exo::catalog::{
    DownloadProgress, FetchOptions, Fetcher, HubClient, HubConfig, HubSource, ModelEntry,
    ModelFile, WeightFormat,
};

use super::fake_hub::FakeHub;

pub const REPO: &str = "test-org/tiny-GGUF";
pub const REVISION: &str = "main";
pub const FILE: &str = "tiny-Q8_0.gguf";
pub const HIDDEN: usize = 128;
const FFN: usize = 256;
const VOCAB: usize = 512;

/// Deterministic values, different for every tensor.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// A small llama-shaped GGUF: `layers` layers (Q8_0 matrices, f32 norms), an embedding,
/// a final norm, an output head unless `tied`, a rope_freqs tensor, and a vocabulary in
/// the metadata so that the header takes several range requests to read.
pub fn tiny_gguf(layers: usize, tied: bool) -> Vec<u8> {
    let device = Device::Cpu;
    let mut seed = 1;
    let mut tensor = |shape: &[usize], dtype: GgmlDType| {
        seed += 1;
        let n = shape.iter().product();
        let t = Tensor::from_vec(values(seed, n), shape, &device).unwrap();
        QTensor::quantize(&t, dtype).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "rope_freqs.weight".into(),
            tensor(&[HIDDEN / 4], GgmlDType::F32),
        ),
        (
            "token_embd.weight".into(),
            tensor(&[VOCAB, HIDDEN], GgmlDType::Q8_0),
        ),
    ];
    for l in 0..layers {
        for (name, shape, dtype) in [
            ("attn_norm.weight", vec![HIDDEN], GgmlDType::F32),
            ("attn_q.weight", vec![HIDDEN, HIDDEN], GgmlDType::Q8_0),
            ("attn_k.weight", vec![HIDDEN / 2, HIDDEN], GgmlDType::Q8_0),
            ("attn_v.weight", vec![HIDDEN / 2, HIDDEN], GgmlDType::Q8_0),
            ("attn_output.weight", vec![HIDDEN, HIDDEN], GgmlDType::Q8_0),
            ("ffn_norm.weight", vec![HIDDEN], GgmlDType::F32),
            ("ffn_gate.weight", vec![FFN, HIDDEN], GgmlDType::Q8_0),
            ("ffn_up.weight", vec![FFN, HIDDEN], GgmlDType::Q8_0),
            ("ffn_down.weight", vec![HIDDEN, FFN], GgmlDType::Q8_0),
        ] {
            tensors.push((format!("blk.{l}.{name}"), tensor(&shape, dtype)));
        }
    }
    tensors.push((
        "output_norm.weight".into(),
        tensor(&[HIDDEN], GgmlDType::F32),
    ));
    if !tied {
        tensors.push((
            "output.weight".into(),
            tensor(&[VOCAB, HIDDEN], GgmlDType::Q8_0),
        ));
    }
    use gguf_file::Value;
    let vocabulary: Vec<Value> = (0..VOCAB)
        .map(|i| Value::String(format!("token-number-{i:05}")))
        .collect();
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(layers as u32)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("tokenizer.ggml.tokens", Value::Array(vocabulary)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    out.into_inner()
}

/// A registry entry for a file the fake hub serves.
pub fn entry(id: &str, repo: &str, path: &str, layers: usize) -> ModelEntry {
    ModelEntry {
        id: id.into(),
        model: id.into(),
        name: id.into(),
        family: "test".into(),
        architecture: "llama".into(),
        parameters: 1_000_000,
        layers,
        attention: AttentionShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
        },
        context_length: 4096,
        license: "apache-2.0".into(),
        instruct: true,
        default_variant: true,
        quantization: "Q8_0".into(),
        format: WeightFormat::Gguf,
        verified: false,
        huggingface: Some(HubSource {
            repo: repo.into(),
            revision: REVISION.into(),
        }),
        files: vec![ModelFile {
            path: path.into(),
            size: None,
            sha256: None,
            manifest: None,
        }],
        index: None,
        extra_files: Vec::new(),
        python_package: None,
        notes: Vec::new(),
    }
}

/// Options for tests: 64 KiB chunks, a 4 KiB first header read, no waits between
/// retries.
pub fn options(retries: u32) -> FetchOptions {
    FetchOptions {
        download: DownloadOptions {
            chunk_bytes: 64 << 10,
            retries,
            retry_delay: Duration::ZERO,
            merge_gap: 64,
        },
        header: HeaderLimits {
            initial: 4 << 10,
            max: 64 << 20,
        },
    }
}

pub fn fetcher(hub: &FakeHub, token: Option<&str>, retries: u32) -> Fetcher {
    let client = HubClient::new(HubConfig::new(&hub.endpoint, token.map(str::to_string)));
    Fetcher::new(client, DownloadProgress::default()).with_options(options(retries))
}

/// Every tensor of a GGUF (bytes in memory) as candle reads it: absolute byte range.
pub fn candle_tensors(bytes: &[u8]) -> (u64, HashMap<String, Range<u64>>) {
    let content = gguf_file::Content::read(&mut Cursor::new(bytes)).unwrap();
    let spans = content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let dtype = info.ggml_dtype;
            let size = (info.shape.elem_count() / dtype.block_size() * dtype.type_size()) as u64;
            let start = content.tensor_data_offset + info.offset;
            (name.clone(), start..start + size)
        })
        .collect();
    (content.tensor_data_offset, spans)
}

/// The names a shard of `layers` of an `n`-layer GGUF needs, by the naming rules alone.
pub fn needed_names(
    all: &HashMap<String, Range<u64>>,
    layers: &Range<usize>,
    n: usize,
) -> Vec<String> {
    let tied = !all.contains_key("output.weight");
    let mut names: Vec<String> = all
        .keys()
        .filter(|name| {
            if let Some(rest) = name.strip_prefix("blk.") {
                let layer: usize = rest.split('.').next().unwrap().parse().unwrap();
                return layers.contains(&layer);
            }
            match name.as_str() {
                "token_embd.weight" => layers.start == 0 || (layers.end == n && tied),
                "output_norm.weight" | "output.weight" => layers.end == n,
                _ => true,
            }
        })
        .cloned()
        .collect();
    names.sort();
    names
}

pub fn bytes_of(all: &HashMap<String, Range<u64>>, names: &[String]) -> u64 {
    names.iter().map(|n| all[n].end - all[n].start).sum()
}

/// Each named tensor read from `path` by candle's GGUF reader equals its bytes in
/// `original`.
pub fn assert_same_tensors(path: &Path, original: &[u8], names: &[String]) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let reference = gguf_file::Content::read(&mut Cursor::new(original)).unwrap();
    for name in names {
        let ours = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let theirs = reference
            .tensor(&mut Cursor::new(original), name, &Device::Cpu)
            .unwrap();
        assert_eq!(
            ours.data().unwrap(),
            theirs.data().unwrap(),
            "tensor {name} differs from the original"
        );
    }
}

/// The real default model's bytes (fetched by scripts/fetch-model.sh when missing).
pub fn smollm_bytes() -> Vec<u8> {
    std::fs::read(super::support::default_model()).unwrap()
}

/// A fake Hub serving the default model's file (the registry's smollm2-135m entry) as the
/// registry names it.
pub fn hub_with_smollm() -> (super::fake_hub::FakeHub, exo::catalog::ModelEntry) {
    let hub = super::fake_hub::FakeHub::start();
    let entry = exo::catalog::Catalog::builtin()
        .require("smollm2-135m")
        .unwrap()
        .clone();
    let source = entry.huggingface.clone().unwrap();
    hub.add(
        &source.repo,
        &source.revision,
        &entry.files[0].path,
        smollm_bytes(),
    );
    (hub, entry)
}

/// A fake Hub serving a six-layer tiny GGUF file (REPO, REVISION, FILE); the file's bytes,
/// an empty models directory and the registry entry that names it.
pub fn tiny_on_a_hub() -> (FakeHub, Vec<u8>, tempfile::TempDir, ModelEntry) {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(6, false);
    hub.add(REPO, REVISION, FILE, bytes.clone());
    let models = tempfile::tempdir().unwrap();
    (hub, bytes, models, entry("tiny", REPO, FILE, 6))
}
