//! Chat request bodies (`POST /v1/chat/completions`) through the handler's own parsing and
//! checks (`check_chat_request`), and the messages that pass through the real model's chat
//! template and tokenizer (SmolLM2's, built from its GGUF file, when the file is here).

use std::sync::{Arc, OnceLock};

use exo::api::check_chat_request;
use exo::engine::ChatMessage;
use exo::engine::text::tokenizer::TextTokenizer;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::harness::{fuzz, mutate, mutations};

const MODEL: &str = "smollm2-135m";

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 .,?!]{0,40}",
        any::<String>(),
        Just(String::new()),
        "<\\|im_(start|end)\\|>[a-z]{0,5}",
        "\\{\\{ ?[a-z_.]{0,12} ?\\}\\}",
        "\\{% ?[a-z ]{0,16} ?%\\}",
        "x{250,260}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        (-3.0f64..3.0).prop_map(|n| json!(n)),
        (0u64..10).prop_map(|n| json!(n)),
        text().prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
    ]
}

fn content() -> impl Strategy<Value = Value> {
    let part = (
        prop_oneof![
            Just("text".to_string()),
            Just("image_url".to_string()),
            text()
        ],
        proptest::option::of(text()),
    )
        .prop_map(|(kind, text)| match text {
            Some(t) => json!({"type": kind, "text": t}),
            None => json!({"type": kind}),
        });
    prop_oneof![
        4 => text().prop_map(Value::String),
        1 => proptest::collection::vec(part, 0..4).prop_map(Value::Array),
        1 => Just(Value::Null),
        1 => number(),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    // Mostly the roles and content a client sends, so that whole bodies pass the checks
    // often enough to test what lies past them (a body is valid only if all its messages are).
    let role = prop_oneof![
        4 => Just("user".to_string()),
        2 => Just("system".to_string()),
        2 => Just("assistant".to_string()),
        1 => Just("developer".to_string()),
        1 => Just("tool".to_string()),
        1 => text(),
    ];
    (role, content(), proptest::bool::weighted(0.9)).prop_map(|(role, content, with_content)| {
        if with_content {
            json!({"role": role, "content": content})
        } else {
            json!({"role": role})
        }
    })
}

/// A field: absent, valid, or anything at all.
fn field(valid: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![3 => Just(None), 3 => valid.prop_map(Some), 1 => number().prop_map(Some)]
}

/// Chat bodies: mostly the shape OpenAI clients send, with every field sometimes wrong.
fn body() -> impl Strategy<Value = Value> {
    let stop = prop_oneof![
        Just(Value::Null),
        text().prop_map(Value::String),
        proptest::collection::vec(text(), 0..7).prop_map(|v| json!(v)),
        number(),
    ];
    let fields = (
        prop_oneof![4 => Just(Value::String(MODEL.into())), 1 => text().prop_map(Value::String), 1 => number()],
        prop_oneof![8 => proptest::collection::vec(message(), 1..4).prop_map(Value::Array), 1 => Just(json!([])), 1 => number()],
        field((1u64..5000).prop_map(|n| json!(n))),
        field((0.0f64..=2.0).prop_map(|n| json!(n))),
        field((0.01f64..=1.0).prop_map(|n| json!(n))),
        field((0u32..100).prop_map(|n| json!(n))),
        field(any::<i64>().prop_map(|n| json!(n))),
        stop,
        field(any::<bool>().prop_map(Value::Bool)),
        field(any::<bool>().prop_map(|b| json!({"include_usage": b}))),
    );
    (
        fields,
        field(Just(json!(1))),
        field(any::<bool>().prop_map(Value::Bool)),
    )
        .prop_map(
            |(
                (
                    model,
                    messages,
                    max_tokens,
                    temperature,
                    top_p,
                    top_k,
                    seed,
                    stop,
                    stream,
                    options,
                ),
                n,
                ignore_eos,
            )| {
                let mut body = json!({"model": model, "messages": messages});
                let object = body.as_object_mut().unwrap();
                for (key, value) in [
                    ("max_tokens", max_tokens),
                    ("temperature", temperature),
                    ("top_p", top_p),
                    ("top_k", top_k),
                    ("seed", seed),
                    ("stop", Some(stop)),
                    ("stream", stream),
                    ("stream_options", options),
                    ("n", n),
                    ("ignore_eos", ignore_eos),
                ] {
                    if let Some(value) = value {
                        object.insert(key.to_string(), value);
                    }
                }
                body
            },
        )
}

/// Whatever `check_chat_request` accepts meets every documented bound; whatever it
/// refuses is a 4xx with a message.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match check_chat_request(bytes, MODEL) {
        Ok(chat) => {
            prop_assert_eq!(chat.settings.model.as_str(), MODEL);
            prop_assert!(!chat.messages.is_empty());
            prop_assert!(
                chat.messages
                    .iter()
                    .all(|m| ["system", "user", "assistant", "tool"].contains(&m.role.as_str()))
            );
            prop_assert!((0.0..=2.0).contains(&chat.settings.sampling.temperature));
            prop_assert!(chat.settings.sampling.validate().is_ok());
            prop_assert!(chat.settings.stop.len() <= 4);
            prop_assert!(chat.settings.stop.iter().all(|s| s.len() <= 256));
        }
        Err(error) => {
            prop_assert!(error.status.is_client_error(), "{:?}", error);
            prop_assert!(!error.message.is_empty());
        }
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_are_refused_with_a_client_error() {
    fuzz(
        "chat/arbitrary-bytes",
        proptest::collection::vec(any::<u8>(), 0..2048),
        |bytes| {
            if let Ok(chat) = check_chat_request(&bytes, MODEL) {
                prop_assert!(false, "random bytes were a chat request: {:?}", chat);
            }
            check(&bytes)
        },
    );
}

#[test]
fn chat_bodies_of_every_shape_are_checked_without_panic() {
    let accepted = std::sync::atomic::AtomicU64::new(0);
    fuzz("chat/bodies", body(), |body| {
        let bytes = serde_json::to_vec(&body).unwrap();
        if check_chat_request(&bytes, MODEL).is_ok() {
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        check(&bytes)
    });
    // The generator must reach past the checks, or only refusals were tested.
    assert!(
        accepted.into_inner() > 0,
        "no generated body was a valid request"
    );
}

#[test]
fn mutated_chat_bodies_are_checked_without_panic() {
    fuzz(
        "chat/mutated",
        (body(), mutations(6)),
        |(body, mutations)| check(&mutate(&serde_json::to_vec(&body).unwrap(), &mutations)),
    );
}

/// SmolLM2's tokenizer and chat template, from the default model's GGUF (fetched by
/// scripts/fetch-model.sh the first time a test needs it, as the other suites do: a fuzz
/// target that skipped without it would pass having checked nothing).
fn tokenizer() -> Arc<TextTokenizer> {
    static TOKENIZER: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let path = super::support::default_model();
            let mut file = std::fs::File::open(path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            let content = candle_core::quantized::gguf_file::Content::read(&mut file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            Arc::new(TextTokenizer::from_gguf(&content).expect("SmolLM2's tokenizer"))
        })
        .clone()
}

#[test]
fn accepted_messages_render_and_tokenize_without_panic() {
    let tokenizer = tokenizer();
    let vocab = tokenizer.vocab_size() as u32;
    fuzz("chat/tokenize", body(), |body| {
        let Ok(chat) = check_chat_request(&serde_json::to_vec(&body).unwrap(), MODEL) else {
            return Ok(());
        };
        match tokenizer.encode_chat(&chat.messages) {
            Ok(ids) => prop_assert!(ids.iter().all(|&id| id < vocab)),
            Err(error) => {
                let message = format!("{:#}", error);
                prop_assert!(!message.is_empty())
            }
        }
        Ok(())
    });
}

#[test]
fn plain_text_tokenizes_and_decodes_back() {
    let tokenizer = tokenizer();
    fuzz(
        "chat/text-round-trip",
        "[a-zA-Z0-9 .,?!'\n\u{e9}\u{4e2d}]{0,200}",
        |text| {
            let ids = tokenizer
                .encode(&text)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let back = tokenizer
                .decode(&ids)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            prop_assert_eq!(back, text);
            let _ = tokenizer.render_chat(&[ChatMessage::new("user", "x")]);
            Ok(())
        },
    );
}
