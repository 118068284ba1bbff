//! Logprobs in the two shapes OpenAI uses: chat's `logprobs.content[]` (token, logprob,
//! bytes, top_logprobs) and text completion's parallel lists (tokens, token_logprobs,
//! top_logprobs, text_offset).
//!
//! The numbers come from the node that sampled the token (see
//! `crate::engine::serve::sampling::logprobs`); here they only get their tokens' text.

use serde_json::{Map, Value, json};

use crate::engine::serve::sampling::TokenLogprobs;
use crate::engine::text::tokenizer::TextTokenizer;

/// OpenAI writes an impossible token's logprob as -9999 (JSON has no -infinity).
fn finite(logprob: f32) -> f64 {
    if logprob.is_finite() {
        f64::from(logprob)
    } else {
        -9999.0
    }
}

/// A token's text: its bytes, a piece of a character written as U+FFFD.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn chat_entry(tokenizer: &TextTokenizer, token: u32, logprob: f32) -> Map<String, Value> {
    let bytes = tokenizer.token_bytes(token);
    let mut entry = Map::new();
    entry.insert("token".into(), json!(text(&bytes)));
    entry.insert("logprob".into(), json!(finite(logprob)));
    entry.insert("bytes".into(), json!(bytes));
    entry
}

/// Chat's `choices[].logprobs` for these tokens.
pub fn chat(tokenizer: &TextTokenizer, tokens: &[TokenLogprobs]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut entry = chat_entry(tokenizer, t.token, t.logprob);
            let top: Vec<Value> = t
                .top
                .iter()
                .map(|&(id, logprob)| Value::Object(chat_entry(tokenizer, id, logprob)))
                .collect();
            entry.insert("top_logprobs".into(), Value::Array(top));
            Value::Object(entry)
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// Text completion's `choices[].logprobs` for these tokens; `offset` is where the first
/// of them starts in the generated text (in bytes of the tokens), and moves past them.
pub fn completion(
    tokenizer: &TextTokenizer,
    tokens: &[TokenLogprobs],
    offset: &mut usize,
) -> Value {
    let mut texts = Vec::with_capacity(tokens.len());
    let mut token_logprobs = Vec::with_capacity(tokens.len());
    let mut top_logprobs = Vec::with_capacity(tokens.len());
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        let bytes = tokenizer.token_bytes(t.token);
        text_offset.push(*offset);
        *offset += bytes.len();
        texts.push(text(&bytes));
        token_logprobs.push(finite(t.logprob));
        let mut top = Map::new();
        for &(id, logprob) in &t.top {
            top.entry(text(&tokenizer.token_bytes(id)))
                .or_insert(json!(finite(logprob)));
        }
        top_logprobs.push(Value::Object(top));
    }
    json!({
        "tokens": texts,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}
