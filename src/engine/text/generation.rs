//! The decoding loop's bookkeeping, shared by local generation and the node's origin:
//! end of sequence, stop strings, the token limit, and text that is safe to show.

use serde::Serialize;

use super::text_stream::{StopCheck, StopMatcher, TextStream};
use super::tokenizer::TextTokenizer;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// The name OpenAI's API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What one sampled token means for the generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOutcome {
    /// Show this text (possibly empty) and go on.
    Continue(String),
    /// Show this text and stop.
    Finished(String, FinishReason),
}

/// The state of one generation as tokens arrive.
pub struct Decoding {
    max_tokens: usize,
    generated: Vec<u32>,
    text: TextStream,
    stops: StopMatcher,
    /// Go on past end-of-sequence tokens (benchmarks want a fixed length).
    ignore_eos: bool,
}

impl Decoding {
    pub fn new(max_tokens: usize, stop_strings: Vec<String>) -> Self {
        Decoding {
            max_tokens,
            generated: Vec::new(),
            text: TextStream::new(),
            stops: StopMatcher::new(stop_strings),
            ignore_eos: false,
        }
    }

    /// Treats end-of-sequence tokens as any other (only the token limit and stop strings
    /// end the generation).
    pub fn ignoring_eos(mut self, ignore: bool) -> Self {
        self.ignore_eos = ignore;
        self
    }

    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// The stop string that ended the generation, if one did.
    pub fn stopped_by(&self) -> Option<&str> {
        self.stops.matched()
    }

    /// Feeds one sampled token.
    pub fn push(&mut self, tokenizer: &TextTokenizer, token: u32) -> anyhow::Result<TokenOutcome> {
        if !self.ignore_eos && tokenizer.is_eos(token) {
            let tail = self.text.finish(tokenizer)?;
            let shown = self.stop_check(&tail);
            return Ok(match shown {
                StopCheck::Stopped(text) => TokenOutcome::Finished(text, FinishReason::Stop),
                StopCheck::Continue(text) => {
                    TokenOutcome::Finished(text + &self.stops.flush(), FinishReason::Stop)
                }
            });
        }
        self.generated.push(token);
        let piece = self.text.push(tokenizer, token)?;
        match self.stop_check(&piece) {
            StopCheck::Stopped(text) => Ok(TokenOutcome::Finished(text, FinishReason::Stop)),
            StopCheck::Continue(text) if self.generated.len() >= self.max_tokens => {
                let tail = self.text.finish(tokenizer)?;
                let rest = match self.stops.push(&tail) {
                    StopCheck::Stopped(t) => {
                        return Ok(TokenOutcome::Finished(text + &t, FinishReason::Stop));
                    }
                    StopCheck::Continue(t) => t + &self.stops.flush(),
                };
                Ok(TokenOutcome::Finished(text + &rest, FinishReason::Length))
            }
            StopCheck::Continue(text) => Ok(TokenOutcome::Continue(text)),
        }
    }

    fn stop_check(&mut self, text: &str) -> StopCheck {
        self.stops.push(text)
    }
}
