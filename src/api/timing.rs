//! Time to first token, time between tokens and token counts of the generations this
//! node's API serves, for `/metrics`. Measured where the client sees them: between the
//! request being accepted and each piece of text leaving the flow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::metrics::{Histogram, TOKEN_BUCKETS};
use crate::node::GenerationEvent;

/// The API's token timings (one per node).
#[derive(Debug)]
pub struct TokenTiming {
    pub time_to_first_token: Histogram,
    pub inter_token: Histogram,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
}

impl Default for TokenTiming {
    fn default() -> Self {
        TokenTiming {
            time_to_first_token: Histogram::new(TOKEN_BUCKETS),
            inter_token: Histogram::new(TOKEN_BUCKETS),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
        }
    }
}

impl TokenTiming {
    /// Passes a generation's events through, timing them. Dropping the returned receiver
    /// drops `events` too (which cancels the request), as if it had not been wrapped.
    pub fn observe(
        self: &std::sync::Arc<Self>,
        mut events: mpsc::Receiver<GenerationEvent>,
    ) -> mpsc::Receiver<GenerationEvent> {
        let (tx, rx) = mpsc::channel(64);
        let timing = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last_text: Option<Instant> = None;
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    _ = tx.closed() => return,
                };
                let Some(event) = event else { return };
                match &event {
                    GenerationEvent::Text(_) => {
                        let now = Instant::now();
                        match last_text {
                            None => timing.time_to_first_token.observe(now - started),
                            Some(last) => timing.inter_token.observe(now - last),
                        }
                        last_text = Some(now);
                    }
                    GenerationEvent::Finished(summary) => {
                        timing
                            .prompt_tokens
                            .fetch_add(summary.prompt_tokens as u64, Ordering::Relaxed);
                        timing
                            .generated_tokens
                            .fetch_add(summary.completion_tokens as u64, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}
