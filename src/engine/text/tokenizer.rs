//! Tokenizers: from tokenizer.json when the model has one, otherwise built from the GGUF
//! metadata as llama.cpp builds it (SentencePiece-style or byte-level BPE, see
//! [`super::gguf_vocab`]).

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

use super::chat_template::{ChatMessage, ChatTemplate, ToolCallStyle};
use super::gguf_vocab::GgufVocab;
use super::tool_prompt::tools_as_text;

/// Where the ids come from.
enum Backend {
    /// Built from GGUF metadata, tokenizing as llama.cpp does.
    Gguf(GgufVocab),
    /// A Hugging Face tokenizer.json.
    Json(Box<Tokenizer>),
}

/// A model's tokenizer with what generation needs around it: end-of-sequence ids and the
/// chat template.
pub struct TextTokenizer {
    backend: Backend,
    eos_ids: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
}

impl TextTokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let vocab = GgufVocab::from_metadata(md)?;
        let token_text =
            |id: Option<u32>| -> &str { id.and_then(|id| vocab.token_text(id)).unwrap_or("") };
        let chat_template = match md.get("tokenizer.chat_template") {
            Some(value) => {
                let source = value
                    .to_string()
                    .map_err(|_| anyhow::anyhow!("tokenizer.chat_template is not a string"))?;
                Some(ChatTemplate::new(
                    source,
                    token_text(vocab.bos),
                    token_text(vocab.eos),
                )?)
            }
            None => None,
        };
        Ok(TextTokenizer {
            eos_ids: vocab.end_ids.clone(),
            bos: vocab.bos,
            add_bos: vocab.add_bos,
            chat_template,
            backend: Backend::Gguf(vocab),
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
            eos_ids,
            bos: bos_token.as_deref().and_then(|t| inner.token_to_id(t)),
            add_bos: config
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            chat_template,
            backend: Backend::Json(Box::new(inner)),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become
    /// their single ids.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        match &self.backend {
            Backend::Gguf(vocab) => vocab.encode(text),
            Backend::Json(inner) => {
                let encoding = inner
                    .encode(text, false)
                    .map_err(|error| anyhow::anyhow!("tokenizing failed: {error}"))?;
                Ok(encoding.get_ids().to_vec())
            }
        }
    }

    /// Text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        match &self.backend {
            Backend::Gguf(vocab) => Ok(vocab.decode(ids)),
            Backend::Json(inner) => inner
                .decode(ids, true)
                .map_err(|error| anyhow::anyhow!("detokenizing failed: {error}")),
        }
    }

    /// The bytes of one token, as the API reports them with logprobs (a token may hold
    /// part of a character, so this is bytes, not text).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match &self.backend {
            Backend::Gguf(vocab) => vocab.token_bytes(id),
            Backend::Json(inner) => inner
                .decode(&[id], false)
                .map(String::into_bytes)
                .unwrap_or_default(),
        }
    }

    /// The control tokens (`<|im_end|>`: no text of their own) by id, with their names:
    /// the grammar engine keeps them out of the text it matches.
    pub fn control_tokens(&self) -> std::collections::HashMap<u32, String> {
        match &self.backend {
            Backend::Gguf(vocab) => (0..vocab.vocab_size() as u32)
                .filter(|&id| vocab.is_control(id))
                .map(|id| (id, vocab.token_text(id).unwrap_or_default().to_string()))
                .collect(),
            Backend::Json(inner) => inner
                .get_added_tokens_decoder()
                .into_iter()
                .filter(|(_, added)| added.special)
                .map(|(id, added)| (id, added.content))
                .collect(),
        }
    }

    /// Tokenizes a plain prompt (text completion): the text as it is, with the model's
    /// BOS first when it asks for one.
    pub fn encode_prompt(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if self.add_bos
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        if ids.is_empty() {
            bail!("the prompt is empty");
        }
        Ok(ids)
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Gguf(vocab) => vocab.vocab_size(),
            Backend::Json(inner) => inner.get_vocab_size(true),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Gguf(vocab) => vocab.token_to_id(token),
            Backend::Json(inner) => inner.token_to_id(token),
        }
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The conversation as the model expects it, ending with the assistant's turn opened.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        self.render_chat_with_tools(messages, &[])
    }

    /// [`Self::render_chat`] with tools offered (OpenAI's function objects): through the
    /// template's `tools` variable, or as text in the system prompt when the template has
    /// none (and then the history's tool calls and results as text too).
    pub fn render_chat_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> anyhow::Result<String> {
        let uses_tools = !tools.is_empty()
            || messages
                .iter()
                .any(|m| m.tool_calls.is_some() || m.role == "tool");
        match &self.chat_template {
            Some(template) if template.renders_tools() || !uses_tools => {
                template.render(messages, tools, true)
            }
            Some(template) => template.render(&tools_as_text(messages, tools), &[], true),
            None => Ok(tools_as_text(messages, tools)
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    /// How the model writes tool calls: as `<tool_call>` blocks when its template says
    /// so or tools reach it as text (which asks for them); after Mistral's `[TOOL_CALLS]`
    /// when its template writes that; else as a whole answer of JSON.
    pub fn tool_call_style(&self) -> ToolCallStyle {
        match &self.chat_template {
            Some(t) if t.writes_tool_call_tags() || !t.renders_tools() => ToolCallStyle::Tagged,
            Some(t) if t.writes_mistral_calls() => ToolCallStyle::Mistral {
                marker: self
                    .control_tokens()
                    .into_iter()
                    .find(|(_, text)| text == "[TOOL_CALLS]")
                    .map(|(id, _)| id),
            },
            Some(_) => ToolCallStyle::Json,
            None => ToolCallStyle::Tagged,
        }
    }

    /// Renders and tokenizes a conversation (a BOS first when the model asks for one and
    /// the template did not write it). Without a template (base models), this is the
    /// messages' text with the model's BOS: what llama.cpp feeds the model for that prompt.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> anyhow::Result<Vec<u32>> {
        self.encode_chat_with_tools(messages, &[])
    }

    /// [`Self::encode_chat`] with tools offered (see [`Self::render_chat_with_tools`]).
    pub fn encode_chat_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> anyhow::Result<Vec<u32>> {
        if messages.is_empty() {
            bail!("the conversation has no messages");
        }
        let text = self.render_chat_with_tools(messages, tools)?;
        // The rendered template is a plain prompt from here on: the same BOS rule.
        self.encode_prompt(&text)
    }
}
