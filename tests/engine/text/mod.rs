//! Text in and out: the tokenizers built from GGUF metadata (checked against llama.cpp's
//! ids on the real files, `llama_cpp_ids`, and on small vocabularies built here,
//! `sentencepiece` and `byte_level_bpe`), the chat template, incremental detokenization
//! and stop strings.

mod byte_level_bpe;
mod llama_cpp_ids;
mod sentencepiece;

use exo::engine::ChatMessage;
use exo::engine::text::text_stream::{StopCheck, StopMatcher, TextStream};

use crate::real_model::smollm;

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
    assert_eq!(matcher.matched(), None);
}

/// The matcher names the stop string that ended the text: the one that occurs first,
/// whatever its place in the list (Anthropic's `stop_sequence`).
#[test]
fn the_stop_string_that_ended_the_text_is_named() {
    let mut matcher = StopMatcher::new(vec!["zz".into(), "b".into(), "c".into()]);
    assert_eq!(matcher.push("a"), StopCheck::Continue("a".into()));
    assert_eq!(matcher.matched(), None);
    assert_eq!(matcher.push("c b zz"), StopCheck::Stopped(String::new()));
    assert_eq!(matcher.matched(), Some("c"));
}
