//! A small byte-level BPE vocabulary built here: each pre-tokenizer's splits, the spaces
//! decoding tidies, BOS defaults, and malformed vocabulary metadata. The expected ids are
//! worked out by hand from llama.cpp's rules.

use candle_core::quantized::gguf_file::Value;
use exo::engine::ChatMessage;
use exo::engine::text::tokenizer::TextTokenizer;

use super::sentencepiece::{BYTE, CONTROL, NORMAL, SPM_TOKENS, content, spm_metadata, strings};

/// The byte-level BPE test vocabulary (GPT-2's alphabet: "Ġ" is a space, "Ċ" a newline)
/// and its merges, best first.
const BPE_TOKENS: &[&str] = &[
    "1",
    "2",
    "3",
    "4",
    "5",
    "a",
    "b",
    "x",
    "y",
    "z",
    "'",
    "S",
    "!",
    "Ġ",
    "Ċ", // 0-14
    "12",
    "123",
    "45",
    "12345",
    "'S",
    "ĊĊ",
    "Ġ!",
    "xyz",
    "<|endoftext|>", // 15-23
];
const BPE_MERGES: &[&str] = &["1 2", "12 3", "4 5", "123 45", "' S", "Ċ Ċ", "Ġ !"];

fn bpe(pre: &str) -> TextTokenizer {
    let mut types = vec![Value::I32(NORMAL); BPE_TOKENS.len()];
    types[23] = Value::I32(CONTROL);
    TextTokenizer::from_gguf(&content(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(BPE_TOKENS)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", strings(BPE_MERGES)),
        ("tokenizer.ggml.eos_token_id", Value::U32(23)),
    ]))
    .unwrap()
}

/// Qwen2's splits of the test texts (DeepSeek-R1's Qwen distills split the same way).
const QWEN2_SPLITS: [&[u32]; 5] = [
    &[0, 1, 2, 3, 4],
    &[5, 19],
    &[5, 20, 6],
    &[7, 8, 9],
    &[21, 12],
];

#[test]
fn each_pre_tokenizer_splits_as_llama_cpp_does() {
    // (pre-tokenizer, "12345", "a'S", "a\n\nb", "xyz", " !!")
    let cases: [(&str, [&[u32]; 5]); 6] = [
        // GPT-2: numbers whole; only lowercase contractions; a newline before a letter
        // stands alone; the space goes with the punctuation.
        (
            "gpt-2",
            [&[18], &[5, 10, 11], &[5, 14, 14, 6], &[7, 8, 9], &[21, 12]],
        ),
        // Punctuation split off first (so the space is alone), then GPT-2's rules, then
        // numbers cut into threes.
        (
            "default",
            [
                &[16, 17],
                &[5, 10, 11],
                &[5, 14, 14, 6],
                &[7, 8, 9],
                &[13, 12, 12],
            ],
        ),
        // Digits one by one, then GPT-2's rules.
        (
            "smollm",
            [
                &[0, 1, 2, 3, 4],
                &[5, 10, 11],
                &[5, 14, 14, 6],
                &[7, 8, 9],
                &[21, 12],
            ],
        ),
        // Llama 3: digits in threes, contractions in any case, newlines together, and a
        // piece that is a token as a whole taken as is (no merge makes "xyz").
        (
            "llama-bpe",
            [&[16, 17], &[5, 19], &[5, 20, 6], &[22], &[21, 12]],
        ),
        // Qwen2 (and DeepSeek-R1's Qwen distills): Llama 3's rules, digits one by one,
        // merges always.
        ("qwen2", QWEN2_SPLITS),
        ("deepseek-r1-qwen", QWEN2_SPLITS),
    ];
    for (pre, expected) in cases {
        let tokenizer = bpe(pre);
        for (text, ids) in ["12345", "a'S", "a\n\nb", "xyz", " !!"]
            .iter()
            .zip(expected)
        {
            assert_eq!(tokenizer.encode(text).unwrap(), ids, "{pre}: {text:?}");
        }
        // Special tokens are cut out whatever the pre-tokenizer.
        assert_eq!(tokenizer.encode("a<|endoftext|>b").unwrap(), [5, 23, 6]);
        assert!(tokenizer.is_eos(23));
    }
}

#[test]
fn bpe_decoding_tidies_spaces_where_llama_cpp_does() {
    // GPT-2, the default and Llama 3 clean up " !" to "!"; Qwen2 and SmolLM leave text as
    // it was.
    for (pre, expected) in [
        ("gpt-2", "!!"),
        ("default", "!!"),
        ("llama-bpe", "!!"),
        ("qwen2", " !!"),
        ("smollm", " !!"),
    ] {
        let tokenizer = bpe(pre);
        let ids = tokenizer.encode(" !!").unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), expected, "{pre}");
    }
}

#[test]
fn llama3_adds_bos_by_default_and_others_do_not() {
    let with_bos = |pre: &str, add_bos: Option<bool>| {
        let mut metadata = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", strings(BPE_TOKENS)),
            ("tokenizer.ggml.merges", strings(BPE_MERGES)),
            ("tokenizer.ggml.bos_token_id", Value::U32(23)),
        ];
        if let Some(flag) = add_bos {
            metadata.push(("tokenizer.ggml.add_bos_token", Value::Bool(flag)));
        }
        let tokenizer = TextTokenizer::from_gguf(&content(metadata)).unwrap();
        tokenizer
            .encode_chat(&[ChatMessage::new("user", "ab")])
            .unwrap()
    };
    assert_eq!(with_bos("llama-bpe", None), [23, 5, 6]);
    assert_eq!(with_bos("llama-bpe", Some(false)), [5, 6]);
    assert_eq!(with_bos("qwen2", None), [5, 6]);
    assert_eq!(with_bos("qwen2", Some(true)), [23, 5, 6]);
}

#[test]
fn malformed_vocabulary_metadata_is_a_clear_error() {
    let spm_with = |key: &'static str, value: Option<Value>| {
        let mut metadata = spm_metadata(SPM_TOKENS);
        metadata.retain(|(k, _)| *k != key);
        if let Some(value) = value {
            metadata.push((key, value));
        }
        TextTokenizer::from_gguf(&content(metadata))
    };
    let cases: Vec<(anyhow::Result<TextTokenizer>, &str)> = vec![
        (
            spm_with("tokenizer.ggml.model", None),
            "no tokenizer.ggml.model",
        ),
        (
            spm_with("tokenizer.ggml.model", Some(Value::String("bert".into()))),
            "'bert'",
        ),
        (
            spm_with("tokenizer.ggml.tokens", None),
            "no tokenizer.ggml.tokens",
        ),
        (
            spm_with("tokenizer.ggml.tokens", Some(Value::String("a".into()))),
            "not an array",
        ),
        (
            spm_with("tokenizer.ggml.tokens", Some(Value::Array(Vec::new()))),
            "empty",
        ),
        (
            spm_with(
                "tokenizer.ggml.tokens",
                Some(Value::Array(vec![Value::U32(7)])),
            ),
            "tokenizer.ggml.tokens holds",
        ),
        (
            spm_with("tokenizer.ggml.tokens", Some(strings(&["a", "b", "a"]))),
            "appears twice",
        ),
        (
            spm_with(
                "tokenizer.ggml.token_type",
                Some(Value::Array(vec![Value::I32(1)])),
            ),
            "tokenizer.ggml.token_type has 1 entries",
        ),
        (
            spm_with(
                "tokenizer.ggml.token_type",
                Some(Value::Array(vec![Value::F32(1.0); 270])),
            ),
            "non-i32",
        ),
        (
            spm_with(
                "tokenizer.ggml.scores",
                Some(Value::Array(vec![Value::String("x".into()); 270])),
            ),
            "tokenizer.ggml.scores holds",
        ),
        (
            spm_with("tokenizer.ggml.scores", Some(Value::F32(0.0))),
            "not an array",
        ),
        (
            spm_with(
                "tokenizer.ggml.bos_token_id",
                Some(Value::String("1".into())),
            ),
            "bos_token_id",
        ),
        (
            spm_with(
                "tokenizer.ggml.add_space_prefix",
                Some(Value::String("yes".into())),
            ),
            "not a bool",
        ),
        (
            spm_with("general.name", Some(Value::U32(3))),
            "general.name",
        ),
    ];
    for (result, expected) in cases {
        let error = format!("{:#}", result.err().expect("an error"));
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }

    // A byte token that is no byte.
    let mut bad_byte = SPM_TOKENS.to_vec();
    bad_byte.push(("<0xZZ>", 0.0, BYTE));
    let error = TextTokenizer::from_gguf(&content(spm_metadata(&bad_byte))).err();
    assert!(format!("{error:?}").contains("<0xXX>"), "{error:?}");

    // BPE: merges missing or malformed, an unknown pre-tokenizer.
    let bpe_with = |pre: &str, merges: Option<Value>| {
        let mut metadata = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", strings(BPE_TOKENS)),
        ];
        if let Some(merges) = merges {
            metadata.push(("tokenizer.ggml.merges", merges));
        }
        match TextTokenizer::from_gguf(&content(metadata)) {
            Ok(_) => panic!("expected an error"),
            Err(error) => format!("{error:#}"),
        }
    };
    assert!(bpe_with("gpt-2", None).contains("no tokenizer.ggml.merges"));
    assert!(bpe_with("gpt-2", Some(strings(&["12"]))).contains("malformed merge"));
    assert!(bpe_with("gpt-2", Some(strings(&["1 9"]))).contains("BPE"));
    assert!(bpe_with("klingon", Some(strings(BPE_MERGES))).contains("unknown GGUF pre-tokenizer"));
}
