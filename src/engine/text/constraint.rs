//! Constrained decoding: a grammar (llguidance's Lark dialect, which embeds JSON schemas
//! as `%json {…}`) compiled against the model's vocabulary, and the token mask it allows
//! at each step. The grammar engine is llguidance (the one llama.cpp and mistral.rs use);
//! this file only builds its view of our tokenizer and applies its masks to logits.

use std::sync::Arc;

use anyhow::{Context, bail};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use super::tokenizer::TextTokenizer;

/// How a JSON value is written under a constraint: compact with Python's separators
/// (`{"a": 1, "b": 2}`), no free whitespace. Free whitespace lets a small model pad its
/// answer with newlines until max_tokens; a fixed layout is what models were trained on.
const JSON_LAYOUT: &str =
    r#"{"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}"#;

/// The Lark grammar whose only sentences are JSON values valid against `schema`.
pub fn json_schema_grammar(schema: &serde_json::Value) -> String {
    format!("start: {}\n", json_rule(schema))
}

/// A Lark expression for a JSON value valid against `schema` (to embed in a larger
/// grammar).
pub fn json_rule(schema: &serde_json::Value) -> String {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        let layout: serde_json::Value =
            serde_json::from_str(JSON_LAYOUT).expect("the layout is valid JSON");
        object.insert("x-guidance".into(), layout);
    }
    format!("%json {schema}")
}

/// A model's grammar compiler: its vocabulary as llguidance sees it. Built once per
/// loaded model (a few hundred milliseconds for a 150k vocabulary).
pub struct Grammars {
    factory: ParserFactory,
    /// Every id that ends generation: allowed wherever the grammar allows the end.
    eos_ids: Vec<u32>,
    vocab_size: usize,
}

impl Grammars {
    pub fn new(tokenizer: &TextTokenizer) -> anyhow::Result<Self> {
        let vocab_size = tokenizer.vocab_size();
        let Some(&eos) = tokenizer.eos_ids().first() else {
            bail!("the model has no end-of-sequence token, so no grammar can end");
        };
        let controls = tokenizer.control_tokens();
        // llguidance marks special tokens with a leading 0xFF byte: no text matches them.
        // Control tokens keep their names (a grammar may name them); ends of sequence and
        // tokens without text get unique names of their ids.
        let special = |name: &[u8]| [&[0xFF][..], name].concat();
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| match controls.get(&id) {
                Some(name) => special(name.as_bytes()),
                None => match tokenizer.token_bytes(id) {
                    bytes if bytes.is_empty() || tokenizer.is_eos(id) => {
                        special(format!("<[{id}]>").as_bytes())
                    }
                    bytes => bytes,
                },
            })
            .collect();
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env)
            .context("building the grammar engine's view of the vocabulary")?;
        factory.quiet();
        Ok(Grammars {
            factory,
            eos_ids: tokenizer.eos_ids().to_vec(),
            vocab_size,
        })
    }

    /// Compiles `grammar` into a matcher at its start. Err says what is wrong with the
    /// grammar (an unsupported JSON Schema keyword is named).
    pub fn matcher(&self, grammar: &str) -> anyhow::Result<Constrained> {
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(grammar.to_string()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            bail!("{error}");
        }
        Ok(Constrained {
            matcher,
            eos_ids: self.eos_ids.clone(),
            vocab_size: self.vocab_size,
        })
    }
}

/// One request's matcher: which tokens may come next.
pub struct Constrained {
    matcher: Matcher,
    eos_ids: Vec<u32>,
    vocab_size: usize,
}

impl Constrained {
    /// Sets every logit the grammar does not allow now to -inf (the model's padding ids
    /// beyond the vocabulary too). Where the grammar may end, every end-of-sequence id
    /// is allowed; once it must end, only they are.
    pub fn mask(&mut self, logits: &mut [f32]) -> anyhow::Result<()> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| anyhow::anyhow!("the grammar failed: {e}"))?;
        let may_end = self.eos_ids.iter().any(|&id| mask.is_allowed(id));
        for (id, logit) in logits.iter_mut().enumerate() {
            let id32 = id as u32;
            let allowed = id < self.vocab_size
                && (mask.is_allowed(id32) || (may_end && self.eos_ids.contains(&id32)));
            if !allowed {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// The token chosen: the matcher moves past it. An end-of-sequence id ends the
    /// matcher's work (the request ends with it).
    pub fn accept(&mut self, token: u32) -> anyhow::Result<()> {
        if self.eos_ids.contains(&token) || self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| anyhow::anyhow!("token {token} breaks the grammar: {e}"))
    }

    /// Replays tokens generated before (a re-planned request's).
    pub fn replay(&mut self, tokens: &[u32]) -> anyhow::Result<()> {
        tokens.iter().try_for_each(|&t| self.accept(t))
    }
}
