//! Chat's response objects: `chat.completion`, and `chat.completion.chunk` when streamed.
//! With tools, the answer's tool calls become `message.tool_calls` (finish reason
//! `tool_calls`); streamed, text goes out as it comes until a call may begin, and the
//! calls go out as `tool_calls` deltas when the answer is complete.

use std::sync::Arc;

use serde_json::json;

use super::logprobs;
use super::respond::{Format, exo_details, now, usage};
use super::tools::ToolSet;
use super::tools::calls::{self, Parsed};
use crate::engine::serve::sampling::TokenLogprobs;
use crate::engine::text::tokenizer::TextTokenizer;
use crate::node::GenerationSummary;

pub struct ChatFormat {
    model: String,
    created: u64,
    tokenizer: Arc<TextTokenizer>,
    /// Whether the client asked for logprobs (`null` otherwise).
    logprobs: bool,
    /// The tools the model may call (None: no tools, or `tool_choice: none`).
    tools: Option<ToolSet>,
    /// Streamed text held back because a tool call may begin in it.
    held: String,
    /// Whether any text went out yet.
    sent_text: bool,
    /// Whether the streamed answer made tool calls.
    called: bool,
}

impl ChatFormat {
    pub fn new(
        model: String,
        tokenizer: Arc<TextTokenizer>,
        logprobs: bool,
        tools: Option<ToolSet>,
    ) -> Self {
        ChatFormat {
            model,
            created: now(),
            tokenizer,
            logprobs,
            tools,
            held: String::new(),
            sent_text: false,
            called: false,
        }
    }

    fn chunk(
        &self,
        id: &str,
        delta: serde_json::Value,
        logprobs: serde_json::Value,
        finish: Option<&str>,
    ) -> serde_json::Value {
        json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        })
    }

    /// `text` split into content and calls of the offered tools.
    fn parse(&self, text: &str) -> Parsed {
        ToolSet::parse_answer(self.tools.as_ref(), text)
    }

    /// The finish reason: `tool_calls` when the answer called tools and ended by itself.
    fn finish_reason(&self, summary: &GenerationSummary, called: bool) -> &'static str {
        match summary.finish.as_str() {
            "stop" if called => "tool_calls",
            other => other,
        }
    }
}

impl Format for ChatFormat {
    fn logprobs_of(&mut self, tokens: &[TokenLogprobs]) -> serde_json::Value {
        if self.logprobs {
            logprobs::chat(&self.tokenizer, tokens)
        } else {
            serde_json::Value::Null
        }
    }

    fn whole(
        &mut self,
        id: &str,
        text: &str,
        logprobs: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> serde_json::Value {
        let parsed = self.parse(text);
        let mut message = json!({ "role": "assistant", "content": text });
        if !parsed.calls.is_empty() {
            message["content"] = if parsed.content.is_empty() {
                serde_json::Value::Null
            } else {
                parsed.content.into()
            };
            message["tool_calls"] = parsed.calls.iter().map(|c| c.to_openai()).collect();
        }
        json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": self.logprobs_of(logprobs),
                "finish_reason": self.finish_reason(summary, !parsed.calls.is_empty()),
            }],
            "usage": usage(summary),
            "exo": exo_details(summary),
        })
    }

    fn opening(&mut self, id: &str) -> Option<serde_json::Value> {
        Some(self.chunk(
            id,
            json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
            None,
        ))
    }

    fn piece(&mut self, id: &str, text: &str, logprobs: &[TokenLogprobs]) -> serde_json::Value {
        let logprobs = self.logprobs_of(logprobs);
        if self.tools.is_none() {
            return self.chunk(id, json!({"content": text}), logprobs, None);
        }
        self.held.push_str(text);
        let ready = calls::releasable(&self.held, !self.sent_text);
        let out: String = self.held.drain(..ready).collect();
        self.sent_text |= !out.is_empty();
        let delta = if out.is_empty() {
            json!({})
        } else {
            json!({"content": out})
        };
        self.chunk(id, delta, logprobs, None)
    }

    fn before_finish(&mut self, id: &str) -> Vec<serde_json::Value> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let held = std::mem::take(&mut self.held);
        let parsed = self.parse(&held);
        let mut out = Vec::new();
        if !parsed.content.is_empty() {
            let content = if parsed.calls.is_empty() {
                held
            } else {
                parsed.content
            };
            out.push(self.chunk(
                id,
                json!({"content": content}),
                serde_json::Value::Null,
                None,
            ));
        }
        for (index, call) in parsed.calls.iter().enumerate() {
            // The id and name first, then the arguments, as OpenAI streams them.
            let mut opening = call.to_openai();
            opening["index"] = index.into();
            opening["function"]["arguments"] = "".into();
            out.push(self.chunk(
                id,
                json!({"tool_calls": [opening]}),
                serde_json::Value::Null,
                None,
            ));
            let arguments = json!({"index": index, "function": {"arguments": call.arguments}});
            out.push(self.chunk(
                id,
                json!({"tool_calls": [arguments]}),
                serde_json::Value::Null,
                None,
            ));
        }
        self.called = !parsed.calls.is_empty();
        out
    }

    fn finish(
        &mut self,
        id: &str,
        logprobs: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> serde_json::Value {
        let logprobs = self.leftover_logprobs(logprobs);
        let reason = self.finish_reason(summary, self.called);
        self.chunk(id, json!({}), logprobs, Some(reason))
    }

    fn note(&mut self, id: &str) -> serde_json::Value {
        self.chunk(id, json!({}), serde_json::Value::Null, None)
    }

    fn usage_only(&mut self, id: &str, summary: &GenerationSummary) -> serde_json::Value {
        let mut chunk = self.chunk(id, json!({}), serde_json::Value::Null, None);
        chunk["choices"] = json!([]);
        chunk["usage"] = usage(summary);
        chunk
    }
}
