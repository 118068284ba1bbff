//! Tokenizers: from tokenizer.json when the model has one, otherwise built from the GGUF
//! metadata (gpt2-style byte-level BPE, as SmolLM2 and Qwen2 use).

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file::{self, Value};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::chat_template::{ChatMessage, ChatTemplate};

/// GPT-2's pre-tokenizer pattern, as llama.cpp applies it (ByteLevel's built-in regex).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer pattern.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer pattern (digits in groups of up to three).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types that are special (control and user-defined tokens).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A model's tokenizer with what generation needs around it: end-of-sequence ids and the
/// chat template.
pub struct TextTokenizer {
    inner: Tokenizer,
    eos_ids: Vec<u32>,
    bos_token: Option<String>,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
}

impl TextTokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let model = string(md.get("tokenizer.ggml.model")).unwrap_or_default();
        if model != "gpt2" {
            bail!(
                "the GGUF tokenizer model is '{model}'; only gpt2-style byte-level BPE can be \
                 built from GGUF metadata (put a tokenizer.json beside the model instead)"
            );
        }
        let tokens: Vec<String> = md
            .get("tokenizer.ggml.tokens")
            .context("GGUF metadata has no tokenizer.ggml.tokens")?
            .to_vec()?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()
            .context("tokenizer.ggml.tokens holds a non-string")?;
        let merges: Vec<(String, String)> = match md.get("tokenizer.ggml.merges") {
            Some(value) => value
                .to_vec()?
                .iter()
                .map(|v| {
                    let merge = v.to_string()?;
                    merge
                        .split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| {
                            candle_core::Error::Msg(format!("malformed merge '{merge}'"))
                        })
                })
                .collect::<Result<_, _>>()
                .context("reading tokenizer.ggml.merges")?,
            None => bail!("GGUF metadata has no tokenizer.ggml.merges"),
        };
        let token_types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .to_vec()?
                .iter()
                .map(|v| v.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|error| {
                anyhow::anyhow!("the GGUF vocabulary does not form a BPE model: {error}")
            })?;
        let mut inner = Tokenizer::new(bpe);
        let pre = string(md.get("tokenizer.ggml.pre")).unwrap_or_else(|| "default".into());
        inner.with_pre_tokenizer(Some(pre_tokenizer_for(&pre)?));
        if matches!(pre.as_str(), "qwen2" | "stablelm2") {
            // Qwen2's own tokenizer.json normalizes to NFC first.
            inner
                .with_normalizer(Some(tokenizers::normalizers::unicode::NFC))
                .map_err(|error| {
                    anyhow::anyhow!("cannot set the tokenizer's normalizer: {error}")
                })?;
        }
        inner.with_decoder(Some(ByteLevel::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|error| anyhow::anyhow!("cannot add the special tokens: {error}"))?;

        let token_at = |key: &str| -> Option<(u32, String)> {
            let id = md.get(key)?.to_u32().ok()?;
            Some((id, tokens.get(id as usize)?.clone()))
        };
        let bos = token_at("tokenizer.ggml.bos_token_id");
        let eos = token_at("tokenizer.ggml.eos_token_id");
        let mut eos_ids: Vec<u32> = eos.iter().map(|(id, _)| *id).collect();
        // The end-of-turn token of chat models, when it differs from eos.
        for marker in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|endoftext|>",
            "<|end_of_text|>",
        ] {
            if let Some(id) = inner.token_to_id(marker)
                && !eos_ids.contains(&id)
            {
                eos_ids.push(id);
            }
        }
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let bos_token = bos.map(|(_, t)| t);
        let chat_template = match string(md.get("tokenizer.chat_template")) {
            Some(source) => Some(ChatTemplate::new(
                &source,
                bos_token.as_deref().unwrap_or(""),
                eos.as_ref().map(|(_, t)| t.as_str()).unwrap_or(""),
            )?),
            None => None,
        };
        Ok(TextTokenizer {
            inner,
            eos_ids,
            bos_token,
            add_bos,
            chat_template,
        })
    }

    /// Loads `tokenizer.json` from a model directory, with the chat template and special
    /// tokens of `tokenizer_config.json` when present.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&path)
            .map_err(|error| anyhow::anyhow!("cannot load {}: {error}", path.display()))?;
        let config: serde_json::Value =
            match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
                Ok(text) => {
                    serde_json::from_str(&text).context("tokenizer_config.json is not JSON")?
                }
                Err(_) => serde_json::Value::Null,
            };
        let token_field = |key: &str| -> Option<String> {
            match config.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                other => other.get("content")?.as_str().map(str::to_string),
            }
        };
        let bos_token = token_field("bos_token");
        let eos_token = token_field("eos_token");
        let mut eos_ids = Vec::new();
        for token in eos_token.iter().map(String::as_str).chain([
            "<|im_end|>",
            "<|eot_id|>",
            "<|endoftext|>",
        ]) {
            if let Some(id) = inner.token_to_id(token)
                && !eos_ids.contains(&id)
            {
                eos_ids.push(id);
            }
        }
        let chat_template = match config.get("chat_template").and_then(|t| t.as_str()) {
            Some(source) => Some(ChatTemplate::new(
                source,
                bos_token.as_deref().unwrap_or(""),
                eos_token.as_deref().unwrap_or(""),
            )?),
            None => None,
        };
        Ok(TextTokenizer {
            inner,
            eos_ids,
            add_bos: config
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            bos_token,
            chat_template,
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become
    /// their single ids.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|error| anyhow::anyhow!("tokenizing failed: {error}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|error| anyhow::anyhow!("detokenizing failed: {error}"))
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The conversation as the model expects it, ending with the assistant's turn opened.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        match &self.chat_template {
            Some(template) => template.render(messages, true),
            None => Ok(messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    /// Renders and tokenizes a conversation (a BOS first when the model asks for one and
    /// the template did not write it).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> anyhow::Result<Vec<u32>> {
        if messages.is_empty() {
            bail!("the conversation has no messages");
        }
        let text = self.render_chat(messages)?;
        let mut ids = self.encode(&text)?;
        if self.add_bos
            && let Some(bos) = self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        if ids.is_empty() {
            bail!("the prompt is empty");
        }
        Ok(ids)
    }
}

fn string(value: Option<&Value>) -> Option<String> {
    value.and_then(|v| v.to_string().ok()).cloned()
}

/// The pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` names.
fn pre_tokenizer_for(pre: &str) -> anyhow::Result<Sequence> {
    let split = |pattern: &str| -> anyhow::Result<Split> {
        Split::new(
            SplitPattern::Regex(pattern.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|error| anyhow::anyhow!("bad pre-tokenizer pattern: {error}"))
    };
    // ByteLevel maps bytes to its printable alphabet after the regex splits.
    let bytes = ByteLevel::new(false, true, false);
    let steps: Vec<tokenizers::PreTokenizerWrapper> = match pre {
        // Digits one by one, then GPT-2's rules.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
            vec![
                split(r"\p{N}")?.into(),
                split(GPT2_PATTERN)?.into(),
                bytes.into(),
            ]
        }
        "qwen2" | "stablelm2" => vec![split(QWEN2_PATTERN)?.into(), bytes.into()],
        "llama-bpe" | "llama3" | "smaug-bpe" => vec![split(LLAMA3_PATTERN)?.into(), bytes.into()],
        "default" | "gpt2" | "gpt-2" => vec![split(GPT2_PATTERN)?.into(), bytes.into()],
        other => {
            tracing::warn!("unknown GGUF pre-tokenizer '{other}': using GPT-2's rules");
            vec![split(GPT2_PATTERN)?.into(), bytes.into()]
        }
    };
    Ok(Sequence::new(steps))
}
