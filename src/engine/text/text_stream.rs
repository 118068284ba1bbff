//! Incremental detokenization that never prints a broken character, and stop strings.

use super::tokenizer::TextTokenizer;

/// Turns tokens into text as they arrive.
///
/// A character can span several byte-level tokens (an emoji is 4 bytes); decoding token
/// by token would print replacement characters. This keeps the tokens since the last
/// complete character and only emits text once it decodes cleanly.
#[derive(Debug, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    /// Start of the window decoded for context (decoders may look at the previous token).
    prefix_start: usize,
    /// Tokens before this index have been emitted.
    read_start: usize,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &TextTokenizer, token: u32) -> anyhow::Result<String> {
        self.tokens.push(token);
        let before = tokenizer.decode(&self.tokens[self.prefix_start..self.read_start])?;
        let now = tokenizer.decode(&self.tokens[self.prefix_start..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let delta = match now.get(before.len()..) {
                Some(delta) if now.starts_with(&before) => delta.to_string(),
                // The decoder changed earlier text (rare): emit the differing tail.
                _ => now.chars().skip(before.chars().count()).collect(),
            };
            self.prefix_start = self.read_start;
            self.read_start = self.tokens.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back at the end (an incomplete character is emitted as is).
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> anyhow::Result<String> {
        let before = tokenizer.decode(&self.tokens[self.prefix_start..self.read_start])?;
        let now = tokenizer.decode(&self.tokens[self.prefix_start..])?;
        self.prefix_start = self.tokens.len();
        self.read_start = self.tokens.len();
        Ok(now.get(before.len()..).unwrap_or_default().to_string())
    }
}

/// Finds stop strings in generated text and holds back text that may be the beginning of
/// one, so that a stop string is never streamed to the client.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    /// The stop string that ended the text, once one has (Anthropic's API names it).
    matched: Option<String>,
}

/// What the matcher lets through.
#[derive(Debug, PartialEq, Eq)]
pub enum StopCheck {
    /// Text that can be shown; generation goes on.
    Continue(String),
    /// The text before a stop string; generation ends.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            matched: None,
        }
    }

    pub fn push(&mut self, text: &str) -> StopCheck {
        self.pending.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| Some((self.pending.find(stop.as_str())?, stop)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = first_stop {
            self.matched = Some(stop.clone());
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopCheck::Stopped(out);
        }
        // Hold back the longest tail that is a prefix of some stop string.
        let held = self
            .stops
            .iter()
            .map(|stop| longest_suffix_prefix(&self.pending, stop))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - held;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopCheck::Continue(out)
    }

    /// The stop string that ended the text, if one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// The held-back text, once generation has ended for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char
/// boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}
