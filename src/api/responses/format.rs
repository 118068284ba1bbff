//! A Responses answer: the `response` object whose `output` holds a `message` item (its
//! `output_text`) and a `function_call` item per tool call; streamed, the documented
//! events in order — `response.created`, `response.in_progress`,
//! `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta`…, `response.output_text.done`,
//! `response.content_part.done`, `response.output_item.done`, for each call
//! `response.output_item.added`, `response.function_call_arguments.delta`/`.done`,
//! `response.output_item.done`, and `response.completed` (or `response.incomplete` when
//! the token limit cut it).

use serde_json::{Value, json};

use crate::api::respond::{Format, now};
use crate::api::tools::ToolSet;
use crate::api::tools::calls::Parsed;
use crate::engine::serve::sampling::TokenLogprobs;
use crate::node::GenerationSummary;

pub struct ResponsesFormat {
    model: String,
    created: u64,
    instructions: Value,
    /// The tools the model may call (None: none, or `tool_choice: none`).
    tools: Option<ToolSet>,
    /// Streamed: the text so far, whether its message item is open, the next sequence
    /// number, the items finished.
    text: String,
    message_open: bool,
    sequence: u64,
    output: Vec<Value>,
}

impl ResponsesFormat {
    pub fn new(model: String, instructions: Value, tools: Option<ToolSet>) -> Self {
        ResponsesFormat {
            model,
            created: now(),
            instructions,
            tools,
            text: String::new(),
            message_open: false,
            sequence: 0,
            output: Vec::new(),
        }
    }

    fn parse(&self, text: &str) -> Parsed {
        ToolSet::parse_answer(self.tools.as_ref(), text)
    }

    /// The `response` object with `output` and its status.
    fn response(&self, id: &str, output: &[Value], summary: Option<&GenerationSummary>) -> Value {
        let cut = summary.is_some_and(|s| s.finish.as_str() == "length");
        let status = match summary {
            None => "in_progress",
            Some(_) if cut => "incomplete",
            Some(_) => "completed",
        };
        let tools: Vec<Value> = self
            .tools
            .iter()
            .flat_map(|t| &t.tools)
            .map(|t| {
                let f = &t["function"];
                json!({"type": "function", "name": f["name"], "description": f["description"],
                       "parameters": f["parameters"], "strict": false})
            })
            .collect();
        json!({
            "id": format!("resp_{id}"),
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": null,
            "incomplete_details": if cut { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": self.instructions,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "tool_choice": "auto",
            "tools": tools,
            "text": {"format": {"type": "text"}},
            "metadata": {},
            "usage": summary.map(|s| json!({
                "input_tokens": s.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": s.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": s.prompt_tokens + s.completion_tokens,
            })),
        })
    }

    fn message_item(id: &str, text: &str, status: &str) -> Value {
        let content: Vec<Value> = if status == "in_progress" {
            Vec::new()
        } else {
            vec![json!({"type": "output_text", "text": text, "annotations": []})]
        };
        json!({"type": "message", "id": format!("msg_{id}"), "status": status,
               "role": "assistant", "content": content})
    }

    fn output_items(id: &str, parsed: &Parsed) -> Vec<Value> {
        let mut output = Vec::new();
        if !parsed.content.is_empty() || parsed.calls.is_empty() {
            output.push(Self::message_item(id, &parsed.content, "completed"));
        }
        for call in &parsed.calls {
            output.push(Self::call_item(call, "completed"));
        }
        output
    }

    fn call_item(call: &crate::api::tools::calls::ToolCall, status: &str) -> Value {
        json!({"type": "function_call", "id": format!("fc_{}", &call.id[5..]), "call_id": call.id,
               "name": call.name, "arguments": call.arguments, "status": status})
    }

    /// An event of type `kind` with its fields and the next sequence number.
    fn event(&mut self, kind: &str, fields: Value) -> Value {
        let mut event = json!({"type": kind, "sequence_number": self.sequence});
        self.sequence += 1;
        if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        event
    }

    /// The events that open the message item and its text part.
    fn open_message(&mut self, id: &str) -> Vec<Value> {
        self.message_open = true;
        let item = Self::message_item(id, "", "in_progress");
        let part = json!({"type": "output_text", "text": "", "annotations": []});
        vec![
            self.event("response.output_item.added", json!({"output_index": 0, "item": item})),
            self.event("response.content_part.added", json!({
                "item_id": format!("msg_{id}"), "output_index": 0, "content_index": 0, "part": part})),
        ]
    }
}

impl Format for ResponsesFormat {
    fn whole(
        &mut self,
        id: &str,
        text: &str,
        _: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> Value {
        let output = Self::output_items(id, &self.parse(text));
        let mut response = self.response(id, &output, Some(summary));
        response["output_text"] = self.parse(text).content.into();
        response
    }

    fn opening(&mut self, id: &str) -> Option<Value> {
        let response = self.response(id, &[], None);
        Some(self.event("response.created", json!({"response": response})))
    }

    fn after_opening(&mut self, id: &str) -> Vec<Value> {
        let response = self.response(id, &[], None);
        vec![self.event("response.in_progress", json!({"response": response}))]
    }

    fn piece(&mut self, id: &str, text: &str, logprobs: &[TokenLogprobs]) -> Value {
        self.pieces(id, text, logprobs)
            .pop()
            .unwrap_or_else(|| self.note(id))
    }

    fn pieces(&mut self, id: &str, text: &str, _: &[TokenLogprobs]) -> Vec<Value> {
        self.text.push_str(text);
        // With tools, the answer may be a call: it goes out whole at the end.
        if self.tools.is_some() {
            return Vec::new();
        }
        let mut events = Vec::new();
        if !self.message_open {
            events = self.open_message(id);
        }
        let delta = json!({"item_id": format!("msg_{id}"), "output_index": 0, "content_index": 0, "delta": text});
        events.push(self.event("response.output_text.delta", delta));
        events
    }

    fn before_finish(&mut self, id: &str) -> Vec<Value> {
        let parsed = self.parse(&self.text.clone());
        let mut events = Vec::new();
        let text_item = !parsed.content.is_empty() || parsed.calls.is_empty();
        if text_item {
            if !self.message_open {
                events.extend(self.open_message(id));
                let delta = json!({"item_id": format!("msg_{id}"), "output_index": 0,
                                   "content_index": 0, "delta": parsed.content});
                events.push(self.event("response.output_text.delta", delta));
            }
            let item_id = format!("msg_{id}");
            let text = parsed.content.clone();
            let part = json!({"type": "output_text", "text": text, "annotations": []});
            events.push(self.event(
                "response.output_text.done",
                json!({
                "item_id": item_id, "output_index": 0, "content_index": 0, "text": text}),
            ));
            events.push(self.event(
                "response.content_part.done",
                json!({
                "item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
            ));
            let item = Self::message_item(id, &text, "completed");
            events.push(self.event(
                "response.output_item.done",
                json!({"output_index": 0, "item": item.clone()}),
            ));
            self.output.push(item);
        }
        for call in &parsed.calls {
            let index = self.output.len();
            let mut item = Self::call_item(call, "in_progress");
            item["arguments"] = "".into();
            let item_id = item["id"].clone();
            events.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            ));
            events.push(self.event(
                "response.function_call_arguments.delta",
                json!({
                "item_id": item_id, "output_index": index, "delta": call.arguments}),
            ));
            events.push(self.event(
                "response.function_call_arguments.done",
                json!({
                "item_id": item_id, "output_index": index, "arguments": call.arguments}),
            ));
            let done = Self::call_item(call, "completed");
            events.push(self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": done.clone()}),
            ));
            self.output.push(done);
        }
        events
    }

    fn finish(&mut self, id: &str, _: &[TokenLogprobs], summary: &GenerationSummary) -> Value {
        let response = self.response(id, &self.output.clone(), Some(summary));
        let kind = match response["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        self.event(kind, json!({"response": response}))
    }

    fn note(&mut self, _id: &str) -> Value {
        // Nothing new: a keep-alive comment would do; an event of no known type is
        // skipped by the SDKs.
        json!({"type": "exo.note"})
    }

    fn usage_only(&mut self, id: &str, summary: &GenerationSummary) -> Value {
        self.response(id, &[], Some(summary))
    }

    fn ends_with_done(&self) -> bool {
        false
    }
}
