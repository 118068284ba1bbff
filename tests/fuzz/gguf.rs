//! GGUF headers: the catalog's reader (`read_gguf_header`, over a prefix of the file) and
//! the engine's loading (`WeightSource::open`: candle's GGUF reader, our range checks, the
//! model config; `TextTokenizer::from_gguf`: the vocabulary and chat template).

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use exo::catalog::gguf_header::{HeaderRead, read_gguf_header};
use exo::engine::model::weights::WeightSource;
use exo::engine::text::tokenizer::TextTokenizer;
use gguf_file::Value;
use proptest::prelude::*;

use super::harness::{check_need_more, edge_u64, fuzz, mutate, mutations};
use crate::support::byte_level_vocabulary;

/// A metadata value of the expected type, or an edge case, or the wrong type.
fn count(expected: u32) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => Just(Some(Value::U32(expected))),
        1 => Just(None),
        1 => any::<u32>().prop_map(|v| Some(Value::U32(v))),
        1 => Just(Some(Value::U32(0))),
        1 => edge_u64().prop_map(|v| Some(Value::U64(v))),
        1 => any::<i32>().prop_map(|v| Some(Value::I32(v))),
        1 => Just(Some(Value::String("many".into()))),
        1 => any::<f32>().prop_map(|v| Some(Value::F32(v))),
    ]
}

fn float(expected: f32) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => Just(Some(Value::F32(expected))),
        1 => Just(None),
        1 => prop_oneof![Just(0.0f32), Just(-1.0), Just(f32::NAN), Just(f32::INFINITY), any::<f32>()]
            .prop_map(|v| Some(Value::F32(v))),
        1 => Just(Some(Value::U8(1))),
    ]
}

#[derive(Debug, Clone)]
struct Spec {
    metadata: Vec<(String, Value)>,
    /// (name, rows, cols)
    tensors: Vec<(String, usize, usize)>,
}

/// A small llama-style GGUF: a config, a gpt2 vocabulary, a chat template, a few tensors,
/// every field sometimes missing, of the wrong type, or out of range.
fn spec() -> impl Strategy<Value = Spec> {
    let arch = prop_oneof![
        6 => Just("llama".to_string()),
        1 => Just("qwen2".to_string()),
        1 => Just("gemma3".to_string()),
        1 => Just("phi3".to_string()),
        1 => "[a-z0-9]{0,8}",
    ];
    let alignment = proptest::option::of(prop_oneof![
        Just(0u32),
        Just(1),
        Just(3),
        Just(32),
        Just(64),
        Just(1 << 20),
        Just(u32::MAX),
        any::<u32>()
    ]);
    let vocab = prop_oneof![
        6 => Just(None),
        1 => Just(Some(Vec::new())),
        1 => proptest::collection::vec("[a-z<>|]{0,6}", 1..20).prop_map(Some),
    ];
    let template = prop_oneof![
        3 => Just(Some("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}".to_string())),
        1 => Just(None),
        1 => "\\{[%{#]? ?[a-z .|()]{0,24} ?[%}#]?\\}".prop_map(Some),
        1 => any::<String>().prop_map(Some),
    ];
    let n = byte_level_vocabulary().len() as u32;
    let config = (
        count(5),
        count(96),
        count(64),
        count(128),
        count(4),
        count(2),
        float(10_000.0),
        float(1e-5),
        count(16),
    );
    let tokenizer = (
        prop_oneof![4 => Just("gpt2".to_string()), 1 => Just("llama".to_string()), 1 => "[a-z]{0,6}"],
        vocab,
        count(n - 2),
        count(n - 1),
        template,
        proptest::option::of(proptest::collection::vec(any::<i32>(), 0..4)),
    );
    let tensors = proptest::collection::vec(
        (
            prop_oneof![
                Just("token_embd.weight".to_string()),
                Just("blk.0.attn_norm.weight".to_string()),
                Just("rope_freqs.weight".to_string()),
                Just("output_norm.weight".to_string()),
                "[a-z.0-9]{0,12}",
            ],
            1..6usize,
            1..9usize,
        ),
        0..5,
    );
    (arch, alignment, config, tokenizer, tensors).prop_map(
        |(arch, alignment, config, tokenizer, tensors)| {
            let (blocks, context, hidden, ffn, heads, kv_heads, theta, eps, rope_dim) = config;
            let (model, vocab, bos, eos, template, token_type) = tokenizer;
            let tokens = vocab.unwrap_or_else(byte_level_vocabulary);
            let types = match token_type {
                Some(t) => t,
                None => (0..tokens.len())
                    .map(|i| if i + 2 >= tokens.len() { 3 } else { 1 })
                    .collect(),
            };
            let mut metadata: Vec<(String, Value)> = vec![
                ("general.architecture".into(), Value::String(arch.clone())),
                ("tokenizer.ggml.model".into(), Value::String(model)),
                (
                    "tokenizer.ggml.tokens".into(),
                    Value::Array(tokens.into_iter().map(Value::String).collect()),
                ),
                (
                    "tokenizer.ggml.token_type".into(),
                    Value::Array(types.into_iter().map(Value::I32).collect()),
                ),
                ("tokenizer.ggml.merges".into(), Value::Array(Vec::new())),
            ];
            let optional = [
                (format!("{arch}.block_count"), blocks),
                (format!("{arch}.context_length"), context),
                (format!("{arch}.embedding_length"), hidden),
                (format!("{arch}.feed_forward_length"), ffn),
                (format!("{arch}.attention.head_count"), heads),
                (format!("{arch}.attention.head_count_kv"), kv_heads),
                (format!("{arch}.rope.freq_base"), theta),
                (format!("{arch}.attention.layer_norm_rms_epsilon"), eps),
                (format!("{arch}.rope.dimension_count"), rope_dim),
                ("tokenizer.ggml.bos_token_id".into(), bos),
                ("tokenizer.ggml.eos_token_id".into(), eos),
                (
                    "tokenizer.chat_template".into(),
                    template.map(Value::String),
                ),
                ("general.alignment".into(), alignment.map(Value::U32)),
            ];
            metadata.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            Spec { metadata, tensors }
        },
    )
}

/// The file candle's writer makes of a spec (None when even the writer refuses it, e.g.
/// an alignment it cannot pad to).
fn write(spec: &Spec) -> Option<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    let tensors: Vec<(String, QTensor)> = spec
        .tensors
        .iter()
        .filter(|(name, _, _)| seen.insert(name.clone()))
        .map(|(name, rows, cols)| {
            let t = Tensor::ones((*rows, *cols), candle_core::DType::F32, &Device::Cpu).unwrap();
            (name.clone(), QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let metadata: Vec<(&str, &Value)> =
        spec.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    // candle's writer pads to 32 whatever general.alignment says: only specs it writes
    // as they claim are "valid".
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gguf_file::write(&mut out, &metadata, &tensor_refs)
    }))
    .ok()?
    .ok()?;
    Some(out.into_inner())
}

/// Every way the node reads a GGUF file, on `bytes`: the catalog's header reader over
/// each prefix length it asks for, and the engine's loading from a file. None may panic.
fn read_all(bytes: &[u8], dir: &Path) -> Result<(), TestCaseError> {
    let size = bytes.len() as u64;
    let mut have = bytes.len().min(64);
    // Grow the prefix as the catalog does: at least what the reader says it needs.
    loop {
        match read_gguf_header(&bytes[..have], size) {
            Ok(HeaderRead::Complete(header)) => {
                prop_assert!(header.layout.header_len <= size);
                for t in &header.layout.tensors {
                    prop_assert!(t.start <= t.end && t.end <= size, "{:?}", t);
                }
                break;
            }
            Ok(HeaderRead::NeedMore(n)) => {
                check_need_more(n, have, size)?;
                have = (n as usize).max(have * 2).min(bytes.len());
            }
            Err(error) => {
                {
                    let message = format!("{:#}", error);
                    prop_assert!(!message.is_empty())
                };
                break;
            }
        }
    }
    let path = dir.join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    if let Ok(source) = WeightSource::open(&path) {
        let _ = source.config();
        if let Some(content) = source.gguf()
            && let Ok(tokenizer) = TextTokenizer::from_gguf(content)
        {
            let _ = tokenizer.encode("Hello, world");
            let _ = tokenizer.encode_chat(&[exo::engine::ChatMessage::new("user", "hi")]);
        }
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // Past the magic and version, so the counts and lengths are what is random.
        (1..=3u32, proptest::collection::vec(any::<u8>(), 0..512)).prop_map(|(v, rest)| {
            let mut b = b"GGUF".to_vec();
            b.extend_from_slice(&v.to_le_bytes());
            b.extend(rest);
            b
        }),
    ];
    fuzz("gguf/arbitrary-bytes", bytes, |bytes| {
        read_all(&bytes, dir.path())
    });
}

#[test]
fn written_files_read_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    fuzz("gguf/round-trip", spec(), |spec| {
        let Some(bytes) = write(&spec) else {
            return Ok(());
        };
        // Our reader is stricter than candle's on purpose: a non-default alignment candle
        // did not pad to, or a negative or non-integer layer count, is refused.
        let plain = spec.metadata.iter().all(|(k, v)| {
            (k != "general.alignment" || matches!(v, Value::U32(32)))
                && (!k.ends_with(".block_count") || matches!(v, Value::U32(_) | Value::U64(_)))
        });
        if plain {
            // What candle wrote, our header reader places exactly where candle reads it.
            let content = gguf_file::Content::read(&mut Cursor::new(&bytes)).unwrap();
            match read_gguf_header(&bytes, bytes.len() as u64) {
                Ok(HeaderRead::Complete(header)) => {
                    prop_assert_eq!(header.layout.header_len, content.tensor_data_offset);
                    prop_assert_eq!(header.layout.tensors.len(), content.tensor_infos.len());
                    for t in &header.layout.tensors {
                        let info = &content.tensor_infos[&t.name];
                        prop_assert_eq!(t.start, content.tensor_data_offset + info.offset);
                        prop_assert_eq!(t.end - t.start, 4 * info.shape.elem_count() as u64);
                    }
                }
                other => prop_assert!(false, "{:?}", other.map(|_| ())),
            }
        }
        read_all(&bytes, dir.path())
    });
}

#[test]
fn mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    fuzz(
        "gguf/mutated",
        (spec(), mutations(8)),
        |(spec, mutations)| {
            let Some(bytes) = write(&spec) else {
                return Ok(());
            };
            read_all(&mutate(&bytes, &mutations), dir.path())
        },
    );
}

/// Found by `gguf/mutated`: `general.alignment = 0` made candle's GGUF reader divide by zero
/// (a panic in `WeightSource::open`, so in the engine's initialize).
#[test]
fn regression_alignment_zero_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for alignment in [Value::U32(0), Value::U8(0), Value::I32(0)] {
        let spec = Spec {
            metadata: vec![
                ("general.architecture".into(), Value::String("llama".into())),
                ("general.alignment".into(), alignment),
            ],
            tensors: vec![("token_embd.weight".into(), 2, 4)],
        };
        let bytes = write(&spec).expect("candle writes it");
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let error = WeightSource::open(&path).err().expect("refused");
        assert!(format!("{error:#}").contains("alignment"), "{error:#}");
    }
}

/// Found by `gguf/mutated` (scripts/fuzz.sh): a tensor whose element count fits in u64 but
/// whose byte size does not (2^62 f32 values) overflowed the multiplication in
/// `read_gguf_header` (a panic where the catalog reads a downloaded header).
#[test]
fn regression_tensor_byte_size_overflow_is_an_error_not_a_panic() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes()); // version
    bytes.extend_from_slice(&1u64.to_le_bytes()); // tensors
    bytes.extend_from_slice(&0u64.to_le_bytes()); // metadata entries
    bytes.extend_from_slice(&1u64.to_le_bytes()); // name length
    bytes.push(b't');
    bytes.extend_from_slice(&1u32.to_le_bytes()); // dimensions
    bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes()); // F32
    bytes.extend_from_slice(&0u64.to_le_bytes()); // offset
    bytes.resize(128, 0);
    let error = read_gguf_header(&bytes, bytes.len() as u64).expect_err("refused");
    assert!(format!("{error:#}").contains("tensor t"), "{error:#}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, &bytes).unwrap();
    assert!(WeightSource::open(&path).is_err());
}
