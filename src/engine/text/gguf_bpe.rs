//! The byte-level BPE side of GGUF vocabularies (`tokenizer.ggml.model = "gpt2"`): the
//! pre-tokenizer llama.cpp uses for each `tokenizer.ggml.pre` name, the BPE model built
//! from the vocabulary and its merges, GPT-2's byte-level alphabet, and the spaces
//! decoding tidies.

use std::sync::OnceLock;

use anyhow::bail;
use tokenizers::Tokenizer;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

/// GPT-2's pre-tokenizer, as llama.cpp writes it.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's pre-tokenizer: digits in groups of up to three. llama.cpp spells the
/// case-insensitive contractions with ASCII classes (so no Unicode case folding).
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer: Llama 3's with digits one by one.
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The BPE tokenizer of a vocabulary: its merges, and the pre-tokenizer `rules` name.
pub(super) fn bpe_tokenizer(
    tokens: &[String],
    merges: Vec<(String, String)>,
    rules: &PreRules,
) -> anyhow::Result<Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(rules.ignore_merges)
        .build()
        .map_err(|error| {
            anyhow::anyhow!("the GGUF vocabulary does not form a BPE model: {error}")
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(rules.pre_tokenizer()?));
    Ok(tokenizer)
}

/// What llama.cpp does for a `tokenizer.ggml.pre` name.
pub(super) struct PreRules {
    /// Regexes applied in turn, each splitting the pieces of the one before (what a regex
    /// does not match stays a piece of its own).
    patterns: &'static [&'static str],
    /// A piece that is a token as a whole skips the merges.
    ignore_merges: bool,
    /// The BOS default when `tokenizer.ggml.add_bos_token` is absent.
    pub(super) add_bos: bool,
    /// Decoding tidies spaces before punctuation and contractions (" ?" to "?").
    pub(super) clean_spaces: bool,
}

impl PreRules {
    pub(super) fn for_name(pre: &str) -> anyhow::Result<Self> {
        let rules = |patterns, clean_spaces| PreRules {
            patterns,
            ignore_merges: false,
            add_bos: false,
            clean_spaces,
        };
        Ok(match pre {
            "default" => rules(
                &[
                    r"[\p{P}\$\+<=>\^~\|]+",
                    GPT2_PATTERN,
                    r"\p{N}+",
                    "[0-9][0-9][0-9]",
                ],
                true,
            ),
            "gpt-2" | "gpt2" => rules(&[GPT2_PATTERN], true),
            // Digits one by one, then GPT-2's rules.
            "smollm" | "command-r" => rules(&[r"\p{N}", GPT2_PATTERN], false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
                rules(&[r"\p{N}", GPT2_PATTERN], true)
            }
            "llama3" | "llama-v3" | "llama-bpe" => PreRules {
                ignore_merges: true,
                add_bos: true,
                ..rules(&[LLAMA3_PATTERN], true)
            },
            "smaug-bpe" | "dbrx" => rules(&[LLAMA3_PATTERN], true),
            "qwen2" | "deepseek-r1-qwen" => rules(&[QWEN2_PATTERN], false),
            "stablelm2" => rules(&[QWEN2_PATTERN], true),
            other => bail!(
                "unknown GGUF pre-tokenizer '{other}' (tokenizer.ggml.pre); known: default, \
                 gpt-2, smollm, llama-bpe, qwen2, deepseek-r1-qwen and a few relatives"
            ),
        })
    }

    /// The regex splits, then GPT-2's mapping of bytes to printable characters.
    fn pre_tokenizer(&self) -> anyhow::Result<Sequence> {
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for pattern in self.patterns {
            let split = Split::new(
                SplitPattern::Regex((*pattern).into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|error| anyhow::anyhow!("bad pre-tokenizer pattern {pattern:?}: {error}"))?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, true, false).into());
        Ok(Sequence::new(steps))
    }
}

/// llama.cpp's `clean_up_tokenization_spaces`: no space before `?!.,`, none around a lone
/// apostrophe, none before `'s`, `'m`, `'re`, `'ve` (the passes run in this order).
pub(super) fn clean_spaces(text: String) -> String {
    let mut text = text;
    for (from, to) in [
        (" ?", "?"),
        (" !", "!"),
        (" .", "."),
        (" ,", ","),
        (" ' ", "'"),
        (" 's", "'s"),
        (" 'm", "'m"),
        (" 're", "'re"),
        (" 've", "'ve"),
    ] {
        if text.contains(from) {
            text = text.replace(from, to);
        }
    }
    text
}

/// The byte a character of GPT-2's byte-level alphabet stands for: printable Latin-1
/// characters stand for themselves, the other bytes were moved, in order, to U+0100 on.
pub(super) fn byte_level_byte(c: char) -> Option<u8> {
    static MOVED: OnceLock<Vec<u8>> = OnceLock::new();
    let code = u32::from(c);
    if let Ok(byte) = u8::try_from(code) {
        return is_printable_byte(byte).then_some(byte);
    }
    let moved = MOVED.get_or_init(|| (0..=255u8).filter(|b| !is_printable_byte(*b)).collect());
    moved.get(code.checked_sub(256)? as usize).copied()
}

fn is_printable_byte(byte: u8) -> bool {
    matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}
