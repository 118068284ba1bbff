//! A small SentencePiece-style vocabulary built here, for what the real files cannot
//! show (the helpers that build vocabularies serve byte_level_bpe.rs too). The expected ids
//! are worked out by hand from llama.cpp's rules (and agree with llama-tokenize run on
//! GGUF copies of these vocabularies).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use exo::engine::text::tokenizer::TextTokenizer;

/// A GGUF header holding only `metadata`.
pub(super) fn content(metadata: Vec<(&str, Value)>) -> Content {
    Content {
        magic: VersionedMagic::GgufV3,
        metadata: metadata
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

pub(super) fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

pub(super) const NORMAL: i32 = 1;
pub(super) const UNKNOWN: i32 = 2;
pub(super) const CONTROL: i32 = 3;
pub(super) const USER_DEFINED: i32 = 4;
pub(super) const BYTE: i32 = 6;

/// The SentencePiece-style test vocabulary: (text, score, type), then the 256 byte tokens
/// (ids 14 to 269, <0x00> first).
pub(super) const SPM_TOKENS: &[(&str, f32, i32)] = &[
    ("<unk>", 0.0, UNKNOWN),      // 0
    ("<s>", 0.0, CONTROL),        // 1
    ("</s>", 0.0, CONTROL),       // 2
    ("<tag>", 0.0, USER_DEFINED), // 3
    ("▁", -1.0, NORMAL),          // 4
    ("a", -1.0, NORMAL),          // 5
    ("b", -1.0, NORMAL),          // 6
    ("c", -1.0, NORMAL),          // 7
    ("ab", -3.0, NORMAL),         // 8
    ("bc", -1.0, NORMAL),         // 9
    ("▁a", -2.0, NORMAL),         // 10
    ("▁ab", -5.0, NORMAL),        // 11
    ("▁c", -0.5, NORMAL),         // 12
    ("aa", -2.0, NORMAL),         // 13
];
const BYTE_0X00: u32 = 14;

pub(super) fn spm_metadata(tokens: &[(&str, f32, i32)]) -> Vec<(&'static str, Value)> {
    let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
    let texts: Vec<&str> = tokens
        .iter()
        .map(|t| t.0)
        .chain(bytes.iter().map(String::as_str))
        .collect();
    let scores = tokens.iter().map(|t| t.1).chain([0.0; 256]);
    let types = tokens.iter().map(|t| t.2).chain([BYTE; 256]);
    vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&texts)),
        (
            "tokenizer.ggml.scores",
            Value::Array(scores.map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ]
}

fn spm(tokens: &[(&str, f32, i32)], extra: Vec<(&'static str, Value)>) -> TextTokenizer {
    let mut metadata = spm_metadata(tokens);
    metadata.extend(extra);
    TextTokenizer::from_gguf(&content(metadata)).unwrap()
}

fn no_space_prefix() -> Vec<(&'static str, Value)> {
    vec![("tokenizer.ggml.add_space_prefix", Value::Bool(false))]
}

#[test]
fn sentencepiece_merges_the_best_scored_pair_first() {
    let tokenizer = spm(SPM_TOKENS, no_space_prefix());
    // "ab" (-3) and "bc" (-1) compete for the b: the better score wins, though "ab" is
    // leftmost.
    assert_eq!(tokenizer.encode("abc").unwrap(), [5, 9]);
    // Swap the scores and "ab" wins.
    let mut swapped = SPM_TOKENS.to_vec();
    swapped[8].1 = -1.0;
    swapped[9].1 = -3.0;
    assert_eq!(
        spm(&swapped, no_space_prefix()).encode("abc").unwrap(),
        [8, 7]
    );
    // A token is reached only through tokens: with "abc" in the vocabulary, "bc" then
    // "a"+"bc" merge, whatever the score of "abc".
    let mut with_abc = SPM_TOKENS.to_vec();
    with_abc.push(("abc", -10.0, NORMAL));
    let abc = with_abc.len() as u32 - 1;
    assert_eq!(
        spm(&with_abc, no_space_prefix()).encode("abc").unwrap(),
        [abc]
    );
    // Equal scores: the leftmost pair merges first.
    assert_eq!(tokenizer.encode("aaa").unwrap(), [13, 5]);
}

#[test]
fn sentencepiece_adds_the_dummy_prefix_and_escapes_spaces() {
    // add_space_prefix is true by default for this vocabulary type.
    let tokenizer = spm(SPM_TOKENS, Vec::new());
    // "▁ab▁c": "▁c" (-0.5) first, then "▁a" (-2), then "▁a"+"b" = "▁ab"; "ab" (-3) came
    // too late, its "a" was taken.
    assert_eq!(tokenizer.encode("ab c").unwrap(), [11, 12]);
    // Decoding turns "▁" into spaces and drops the prefix's space.
    assert_eq!(tokenizer.decode(&[11, 12]).unwrap(), "ab c");
    assert_eq!(tokenizer.decode(&[12]).unwrap(), "c");
    // Without the dummy prefix, the text is taken as it is.
    let bare = spm(SPM_TOKENS, no_space_prefix());
    assert_eq!(bare.encode("ab c").unwrap(), [8, 12]);
    assert_eq!(bare.decode(&[8, 12]).unwrap(), "ab c");
}

#[test]
fn sentencepiece_cuts_special_tokens_out_and_prefixes_what_follows() {
    let tokenizer = spm(SPM_TOKENS, Vec::new());
    // Text after a special token gets the dummy prefix again, as in llama.cpp.
    assert_eq!(tokenizer.encode("<s>ab</s>c").unwrap(), [1, 11, 2, 12]);
    // A user-defined token too: "b" becomes "▁b", which is no token.
    assert_eq!(tokenizer.encode("a<tag>b").unwrap(), [10, 3, 4, 6]);
    // Control tokens are left out of decoded text, user-defined ones kept. A BOS first
    // writes nothing yet keeps the next token's space (llama.cpp strips a space from the
    // first token only).
    assert_eq!(tokenizer.decode(&[10, 3, 4, 6]).unwrap(), "a<tag> b");
    assert_eq!(tokenizer.decode(&[1, 11, 2, 12]).unwrap(), " ab c");
    // The unknown token is a special token too.
    assert_eq!(tokenizer.encode("<unk>").unwrap(), [0]);
    assert_eq!(tokenizer.decode(&[0, 5]).unwrap(), "a");
}

#[test]
fn sentencepiece_falls_back_to_bytes() {
    let tokenizer = spm(SPM_TOKENS, no_space_prefix());
    // "é" is no token: its two UTF-8 bytes are.
    assert_eq!(
        tokenizer.encode("aé").unwrap(),
        [5, BYTE_0X00 + 0xC3, BYTE_0X00 + 0xA9]
    );
    assert_eq!(
        tokenizer
            .decode(&[5, BYTE_0X00 + 0xC3, BYTE_0X00 + 0xA9])
            .unwrap(),
        "aé"
    );
    // A vocabulary without byte tokens cannot spell it: an error, not a panic.
    let no_bytes = content(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&["<unk>", "▁", "a"])),
    ]);
    let tokenizer = TextTokenizer::from_gguf(&no_bytes).unwrap();
    assert_eq!(tokenizer.encode("a").unwrap(), [1, 2]);
    let error = tokenizer.encode("é").unwrap_err().to_string();
    assert!(error.contains("no byte token"), "{error}");
}

#[test]
fn phi3_strips_whitespace_after_its_special_tokens() {
    // llama.cpp knows Phi-3 by its name and strips the whitespace after special tokens,
    // except after <s>, <unk> and <|endoftext|>. (llama.cpp itself refuses to load a
    // "Phi-3" vocabulary without <|endoftext|>; with one added it gives these ids.)
    let phi3 = spm(
        SPM_TOKENS,
        vec![("general.name", Value::String("Phi-3 mini".into()))],
    );
    assert_eq!(phi3.encode("</s>\n  c").unwrap(), [2, 12]);
    let newline = BYTE_0X00 + 0x0A;
    assert_eq!(phi3.encode("<s>\nc").unwrap(), [1, 4, newline, 7]);
    // Any other model keeps it: "▁\n▁▁c" has only "▁c" to merge.
    let other = spm(SPM_TOKENS, Vec::new());
    assert_eq!(other.encode("</s>\n  c").unwrap(), [2, 4, newline, 4, 12]);
}
