//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, tokenizing as
//! llama.cpp does: the ids a model was converted with are the ids llama.cpp gives it, so
//! llama.cpp is the reference here rather than the Hugging Face tokenizer the file came from.
//!
//! Two kinds of vocabulary:
//! - `"llama"`: SentencePiece-style, merges chosen by token score (see [`super::spm`]);
//!   Gemma, Mistral, Phi-3;
//! - `"gpt2"`: byte-level BPE with ranked merges after a regex pre-tokenizer named by
//!   `tokenizer.ggml.pre` (see [`super::gguf_bpe`]); Llama 3, Qwen2/2.5/3,
//!   DeepSeek-R1-Distill-Qwen, SmolLM.
//!
//! Both share llama.cpp's handling of special tokens: control, user-defined and unknown
//! tokens written in the text are cut out first (longest first) and become their single
//! ids; the model only sees the text between them.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file::Value;
use tokenizers::Tokenizer;

use super::gguf_bpe::{PreRules, bpe_tokenizer, byte_level_byte, clean_spaces};
use super::spm::SpmVocab;

/// Token texts llama.cpp treats as ending generation, whatever their GGUF type: it makes
/// them control tokens (cut out of text, left out of decoded text), and so does this.
const END_OF_GENERATION: [&str; 9] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<eos>",
    "</s>",
];

/// `</s>` ends generation only when it is the eos token: Gemma's vocabulary has a `</s>`
/// that is the HTML tag, Qwen2's an ordinary one. (llama.cpp stops at it anyway.)
const ENDS_ONLY_AS_EOS: &str = "</s>";

/// A token's type, from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    Undefined,
}

impl TokenKind {
    fn from_gguf(value: i32) -> Self {
        match value {
            1 => TokenKind::Normal,
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Undefined,
        }
    }

    /// Tokens matched in raw text before the model tokenizes it.
    fn is_special(self) -> bool {
        matches!(
            self,
            TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
        )
    }
}

/// A special token as the text splitter sees it.
struct Special {
    id: u32,
    /// Whitespace right after the token is dropped (llama.cpp does so for Phi-3).
    rstrip: bool,
}

/// How the text between special tokens becomes ids.
enum Model {
    Spm {
        scores: Vec<f32>,
        byte_ids: Box<[Option<u32>; 256]>,
    },
    /// Hugging Face's tokenizers does the regex splitting and the BPE merges (with no
    /// special tokens of its own: those are cut out before).
    Bpe(Box<Tokenizer>),
}

/// A tokenizer built from GGUF metadata, with the special ids generation needs.
pub struct GgufVocab {
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    ids: HashMap<String, u32>,
    /// Longest text first: llama.cpp's order of cutting them out.
    specials: Vec<Special>,
    model: Model,
    /// SentencePiece's dummy prefix: a space before text that starts the input or follows
    /// a special token; decoding drops the space the first token then starts with.
    add_space_prefix: bool,
    /// See [`super::gguf_bpe::clean_spaces`].
    clean_spaces: bool,
    pub bos: Option<u32>,
    pub add_bos: bool,
    pub eos: Option<u32>,
    /// The eos token and the end-of-turn tokens the vocabulary has.
    pub end_ids: Vec<u32>,
}

impl GgufVocab {
    pub fn from_metadata(md: &HashMap<String, Value>) -> anyhow::Result<Self> {
        let model_type = string(md, "tokenizer.ggml.model")?
            .context("GGUF metadata has no tokenizer.ggml.model")?;
        let spm = match model_type.as_str() {
            "llama" => true,
            "gpt2" => false,
            other => bail!(
                "the GGUF tokenizer model is '{other}'; only 'llama' (SentencePiece-style) and \
                 'gpt2' (byte-level BPE) can be built from GGUF metadata (put a tokenizer.json \
                 beside the model instead)"
            ),
        };
        let tokens = read_tokens(md)?;
        let n_tokens = tokens.len();
        let mut ids = HashMap::with_capacity(n_tokens);
        for (id, token) in tokens.iter().enumerate() {
            if let Some(first) = ids.insert(token.clone(), id as u32) {
                bail!(
                    "token {token:?} appears twice in tokenizer.ggml.tokens (ids {first} and {id})"
                );
            }
        }
        let mut kinds = read_kinds(md, n_tokens)?;

        // An id from the metadata, else llama.cpp's default for the vocabulary type; one
        // outside the vocabulary counts as none.
        let token_id = |key: &str, default: Option<u32>| -> anyhow::Result<Option<u32>> {
            let id = match md.get(key) {
                Some(value) => Some(
                    integer(value).with_context(|| format!("{key} is not an unsigned integer"))?,
                ),
                None => default,
            };
            Ok(id.filter(|&id| {
                let known = (id as usize) < n_tokens;
                if !known {
                    tracing::warn!("{key} = {id} is outside the {n_tokens}-token vocabulary");
                }
                known
            }))
        };
        let bos = token_id("tokenizer.ggml.bos_token_id", spm.then_some(1))?;
        let eos = token_id("tokenizer.ggml.eos_token_id", spm.then_some(2))?;
        let eot = token_id("tokenizer.ggml.eot_token_id", None)?;
        let eom = token_id("tokenizer.ggml.eom_token_id", None)?;
        let mut end_ids: Vec<u32> = Vec::new();
        for id in [eos, eot, eom].into_iter().flatten() {
            if !end_ids.contains(&id) {
                end_ids.push(id);
            }
        }
        for marker in END_OF_GENERATION {
            if let Some(&id) = ids.get(marker) {
                kinds[id as usize] = TokenKind::Control;
                if marker != ENDS_ONLY_AS_EOS && !end_ids.contains(&id) {
                    end_ids.push(id);
                }
            }
        }

        // SentencePiece vocabularies have no pre-tokenizer (llama.cpp ignores the name).
        let rules = if spm {
            None
        } else {
            let pre = string(md, "tokenizer.ggml.pre")?.unwrap_or_else(|| "default".into());
            Some(PreRules::for_name(&pre)?)
        };
        let add_space_prefix = boolean(md, "tokenizer.ggml.add_space_prefix")?.unwrap_or(spm);
        let add_bos = boolean(md, "tokenizer.ggml.add_bos_token")?
            .unwrap_or(spm || rules.as_ref().is_some_and(|r| r.add_bos));

        // llama.cpp strips whitespace after Phi-3's special tokens (it knows the model by
        // name); "<|user|>\nHi" reads as "<|user|>Hi".
        let name = string(md, "general.name")?
            .unwrap_or_default()
            .to_lowercase();
        let phi3 = name.contains("phi-3") || name.contains("phi3");
        let mut specials: Vec<Special> = (0..n_tokens)
            .filter(|&id| kinds[id].is_special())
            .map(|id| Special {
                id: id as u32,
                rstrip: phi3 && !matches!(tokens[id].as_str(), "<unk>" | "<s>" | "<|endoftext|>"),
            })
            .collect();
        specials.sort_by(|a, b| {
            let len = |s: &Special| tokens[s.id as usize].len();
            len(b).cmp(&len(a)).then(a.id.cmp(&b.id))
        });

        let clean_spaces = rules.as_ref().is_some_and(|r| r.clean_spaces);
        let model = match &rules {
            None => spm_model(md, &tokens, &kinds, &ids)?,
            Some(rules) => Model::Bpe(Box::new(bpe_tokenizer(&tokens, read_merges(md)?, rules)?)),
        };
        Ok(GgufVocab {
            tokens,
            kinds,
            ids,
            specials,
            model,
            add_space_prefix,
            clean_spaces,
            bos,
            add_bos,
            eos,
            end_ids,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// The text of a token as the vocabulary spells it (`▁Hello`, `<bos>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Token ids of `text`, special tokens written in it included (no BOS is added).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut ids = Vec::new();
        // SentencePiece's dummy prefix goes before the input and after each special token.
        let mut after_special = true;
        for fragment in self.split_specials(text) {
            match fragment {
                Fragment::Token(id) => {
                    ids.push(id);
                    after_special = true;
                }
                Fragment::Text(text) => {
                    self.encode_text(text, after_special, &mut ids)?;
                    after_special = false;
                }
            }
        }
        Ok(ids)
    }

    fn encode_text(
        &self,
        text: &str,
        after_special: bool,
        ids: &mut Vec<u32>,
    ) -> anyhow::Result<()> {
        match &self.model {
            Model::Spm { scores, byte_ids } => {
                let prefix = if self.add_space_prefix && after_special {
                    " "
                } else {
                    ""
                };
                let escaped = format!("{prefix}{text}").replace(' ', "\u{2581}");
                let vocab = SpmVocab {
                    ids: &self.ids,
                    scores,
                    byte_ids,
                };
                vocab.tokenize(&escaped, ids)
            }
            Model::Bpe(tokenizer) => {
                let encoding = tokenizer
                    .encode_fast(text, false)
                    .map_err(|error| anyhow::anyhow!("tokenizing failed: {error}"))?;
                ids.extend_from_slice(encoding.get_ids());
                Ok(())
            }
        }
    }

    /// Cuts the special tokens out of `text`, longest first, as llama.cpp does.
    fn split_specials<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut fragments = Vec::new();
        if !text.is_empty() {
            fragments.push(Fragment::Text(text));
        }
        for special in &self.specials {
            let needle = self.tokens[special.id as usize].as_str();
            let occurs = fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)));
            if !occurs {
                continue;
            }
            let mut split = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    split.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    if at > 0 {
                        split.push(Fragment::Text(&rest[..at]));
                    }
                    split.push(Fragment::Token(special.id));
                    rest = &rest[at + needle.len()..];
                    if special.rstrip {
                        rest = rest.trim_start_matches(is_c_space);
                    }
                }
                if !rest.is_empty() {
                    split.push(Fragment::Text(rest));
                }
            }
            fragments = split;
        }
        fragments
    }

    /// Text of `ids`: control and unknown tokens left out, user-defined tokens as written,
    /// byte tokens reassembled into characters (a character still incomplete at the end
    /// reads as U+FFFD). Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        let mut strip_space = self.add_space_prefix;
        for &id in ids {
            let start = bytes.len();
            self.push_piece(id, &mut bytes);
            // llama.cpp drops the dummy prefix's space from the first token only (a BOS
            // first, which writes nothing, keeps the next token's space).
            if strip_space && bytes.get(start) == Some(&b' ') {
                bytes.remove(start);
            }
            strip_space = false;
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if self.clean_spaces {
            clean_spaces(text)
        } else {
            text
        }
    }

    /// Whether a token is a control token (`<|im_end|>`): no text of its own.
    pub fn is_control(&self, id: u32) -> bool {
        matches!(self.kinds.get(id as usize), Some(TokenKind::Control))
    }

    /// The bytes one token stands for (a byte token is its one byte; control tokens are
    /// empty), as the API reports a token's `bytes`.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.push_piece(id, &mut bytes);
        bytes
    }

    fn push_piece(&self, id: u32, out: &mut Vec<u8>) {
        let (Some(text), Some(kind)) = (self.tokens.get(id as usize), self.kinds.get(id as usize))
        else {
            return;
        };
        match kind {
            TokenKind::UserDefined => out.extend_from_slice(text.as_bytes()),
            TokenKind::Normal => match self.model {
                Model::Spm { .. } => {
                    out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes())
                }
                Model::Bpe(_) => {
                    for c in text.chars() {
                        match byte_level_byte(c) {
                            Some(byte) => out.push(byte),
                            // Not GPT-2's alphabet: llama.cpp writes an error marker; the
                            // character itself is more useful.
                            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                }
            },
            TokenKind::Byte => {
                if let Some(byte) = byte_token_value(text) {
                    out.push(byte);
                }
            }
            TokenKind::Control | TokenKind::Unknown | TokenKind::Unused | TokenKind::Undefined => {}
        }
    }
}

/// A stretch of the input: text for the model, or a special token cut out of it.
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// C's `isspace` in the "C" locale, which llama.cpp uses to strip around special tokens.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn spm_model(
    md: &HashMap<String, Value>,
    tokens: &[String],
    kinds: &[TokenKind],
    ids: &HashMap<String, u32>,
) -> anyhow::Result<Model> {
    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
        Some(value) => {
            let scores = array(value, "tokenizer.ggml.scores")?;
            if scores.len() < tokens.len() {
                bail!(
                    "tokenizer.ggml.scores has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                );
            }
            scores[..tokens.len()]
                .iter()
                .map(|v| match v {
                    Value::F32(score) => Ok(*score),
                    Value::I32(score) => Ok(*score as f32),
                    other => bail!("tokenizer.ggml.scores holds a {:?}", other.value_type()),
                })
                .collect::<anyhow::Result<_>>()?
        }
        // llama.cpp scores every token 0 then: merges go left to right.
        None => vec![0.0; tokens.len()],
    };
    for (token, kind) in tokens.iter().zip(kinds) {
        if *kind == TokenKind::Byte && byte_token_value(token).is_none() {
            bail!("token {token:?} is typed as a byte token but is not of the form <0xXX>");
        }
    }
    // A byte is spelled <0xXX>; llama.cpp falls back to the byte itself as a token.
    let mut byte_ids = Box::new([None; 256]);
    for (byte, slot) in byte_ids.iter_mut().enumerate() {
        *slot = ids.get(&format!("<0x{byte:02X}>")).copied().or_else(|| {
            let c = char::from(byte as u8);
            (byte < 0x80).then(|| ids.get(c.encode_utf8(&mut [0; 4]) as &str).copied())?
        });
    }
    Ok(Model::Spm { scores, byte_ids })
}

/// `tokenizer.ggml.merges`: pairs of token texts, in rank order.
fn read_merges(md: &HashMap<String, Value>) -> anyhow::Result<Vec<(String, String)>> {
    Ok(match md.get("tokenizer.ggml.merges") {
        Some(value) => array(value, "tokenizer.ggml.merges")?
            .iter()
            .map(|v| {
                let merge = v
                    .to_string()
                    .map_err(|_| anyhow::anyhow!("tokenizer.ggml.merges holds a non-string"))?;
                // The separating space is the first one after the first character (which
                // may itself be a space, as llama.cpp allows).
                let first = merge.chars().next().map_or(0, char::len_utf8);
                match merge[first..].find(' ') {
                    Some(at) => Ok((
                        merge[..first + at].to_string(),
                        merge[first + at + 1..].to_string(),
                    )),
                    None => bail!("malformed merge {merge:?} in tokenizer.ggml.merges"),
                }
            })
            .collect::<anyhow::Result<_>>()?,
        None => bail!("GGUF metadata has no tokenizer.ggml.merges"),
    })
}

/// The byte of a `<0xXX>` token.
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// `tokenizer.ggml.token_type`; every token is normal without it.
fn read_kinds(md: &HashMap<String, Value>, n_tokens: usize) -> anyhow::Result<Vec<TokenKind>> {
    let Some(value) = md.get("tokenizer.ggml.token_type") else {
        return Ok(vec![TokenKind::Normal; n_tokens]);
    };
    let types = array(value, "tokenizer.ggml.token_type")?;
    if types.len() < n_tokens {
        bail!(
            "tokenizer.ggml.token_type has {} entries for {n_tokens} tokens",
            types.len()
        );
    }
    types[..n_tokens]
        .iter()
        .map(|v| v.to_i32().map(TokenKind::from_gguf))
        .collect::<Result<Vec<_>, _>>()
        .context("tokenizer.ggml.token_type holds a non-i32")
}

/// `tokenizer.ggml.tokens`, with llama.cpp's names for empty tokens (a vocabulary needs
/// distinct, non-empty texts).
fn read_tokens(md: &HashMap<String, Value>) -> anyhow::Result<Vec<String>> {
    let values = array(
        md.get("tokenizer.ggml.tokens")
            .context("GGUF metadata has no tokenizer.ggml.tokens")?,
        "tokenizer.ggml.tokens",
    )?;
    if values.is_empty() {
        bail!("tokenizer.ggml.tokens is empty");
    }
    if u32::try_from(values.len()).is_err() {
        bail!("tokenizer.ggml.tokens has more tokens than u32 ids can number");
    }
    values
        .iter()
        .enumerate()
        .map(|(id, value)| match value {
            Value::String(text) if text.is_empty() => Ok(format!("[EMPTY_{id}]")),
            Value::String(text) => Ok(text.clone()),
            other => bail!(
                "tokenizer.ggml.tokens holds a {:?} at {id}",
                other.value_type()
            ),
        })
        .collect()
}

fn array<'v>(value: &'v Value, key: &str) -> anyhow::Result<&'v Vec<Value>> {
    value
        .to_vec()
        .map_err(|_| anyhow::anyhow!("{key} is a {:?}, not an array", value.value_type()))
}

fn string(md: &HashMap<String, Value>, key: &str) -> anyhow::Result<Option<String>> {
    md.get(key)
        .map(|value| match value {
            Value::String(text) => Ok(text.clone()),
            other => bail!("{key} is a {:?}, not a string", other.value_type()),
        })
        .transpose()
}

fn boolean(md: &HashMap<String, Value>, key: &str) -> anyhow::Result<Option<bool>> {
    md.get(key)
        .map(|value| match value {
            Value::Bool(flag) => Ok(*flag),
            other => bail!("{key} is a {:?}, not a bool", other.value_type()),
        })
        .transpose()
}

/// A token id, whatever unsigned or non-negative integer type the writer chose.
fn integer(value: &Value) -> Option<u32> {
    match value {
        Value::U8(v) => Some(u32::from(*v)),
        Value::U16(v) => Some(u32::from(*v)),
        Value::U32(v) => Some(*v),
        Value::U64(v) => u32::try_from(*v).ok(),
        Value::I8(v) => u32::try_from(*v).ok(),
        Value::I16(v) => u32::try_from(*v).ok(),
        Value::I32(v) => u32::try_from(*v).ok(),
        Value::I64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}
