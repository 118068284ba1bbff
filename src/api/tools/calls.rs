//! The model's answer parsed back into tool calls: Hermes-style `<tool_call>{json}
//! </tool_call>` blocks (Qwen2.5/Qwen3 and the text convention for other templates), a
//! JSON list of calls after Mistral's `[TOOL_CALLS]`, or an answer that is a JSON call as
//! a whole (`{"name", "arguments"}`, or a list of them, as Llama 3.1 writes them). Only
//! calls of offered functions count; anything else stays text.

use serde_json::{Value, json};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
/// Mistral's marker before its list of calls.
const MISTRAL: &str = "[TOOL_CALLS]";

/// One call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

impl ToolCall {
    /// As OpenAI's `message.tool_calls[i]`.
    pub fn to_openai(&self) -> Value {
        json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }

    /// The arguments as a JSON value (Anthropic's `input`, Ollama's `arguments`); text
    /// that is no JSON stays a string rather than being lost.
    pub fn input(&self) -> Value {
        serde_json::from_str(&self.arguments).unwrap_or_else(|_| self.arguments.clone().into())
    }
}

/// An answer split into its text and its calls.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// A fresh call id (`call_` and 24 hex digits, like OpenAI's).
fn call_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &id[..24])
}

/// A call from one JSON value, if it is a call of one of `names`.
fn call_from(value: &Value, names: &[&str]) -> Option<ToolCall> {
    let name = value.get("name")?.as_str()?;
    if !names.contains(&name) {
        return None;
    }
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall {
        id: call_id(),
        name: name.to_string(),
        arguments,
    })
}

/// Splits `text` into content and calls of the functions `names`.
pub fn parse(text: &str, names: &[&str]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut rest = text;
    let mut content = String::new();
    while let Some(start) = rest.find(OPEN) {
        content.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let (inner, next) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            None => (after, ""),
        };
        match serde_json::from_str::<Value>(inner.trim())
            .ok()
            .and_then(|v| call_from(&v, names))
        {
            Some(call) => parsed.calls.push(call),
            None => content.push_str(&rest[start..rest.len() - next.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    if parsed.calls.is_empty() {
        // Mistral's marker and its calls, or a whole answer that is a call or a list of
        // calls (also Mistral's when its marker, a control token, was not decoded).
        let (before, calls) = match content.find(MISTRAL) {
            Some(at) => (at, json_calls(&content[at + MISTRAL.len()..], names)),
            None => (0, json_calls(&content, names)),
        };
        if let Some(calls) = calls {
            parsed.calls = calls;
            content.truncate(before);
        }
    }
    parsed.content = content.trim().to_string();
    parsed
}

/// `text` as a whole, when it is one call or a list of calls of `names`.
fn json_calls(text: &str, names: &[&str]) -> Option<Vec<ToolCall>> {
    match serde_json::from_str::<Value>(text.trim()).ok()? {
        Value::Array(items) => {
            let calls: Option<Vec<ToolCall>> = items.iter().map(|v| call_from(v, names)).collect();
            calls.filter(|c| !c.is_empty())
        }
        value => call_from(&value, names).map(|call| vec![call]),
    }
}

/// How much of a streamed answer may go out as text now: everything up to where a call
/// may begin (a `<tool_call>` or `[TOOL_CALLS]`, or a prefix of one at the end; an answer
/// whose first character opens JSON). Returns the length that is safe to send.
pub fn releasable(held: &str, at_start: bool) -> usize {
    if at_start {
        let trimmed = held.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('{') || trimmed.starts_with('[') {
            return 0;
        }
    }
    if let Some(start) = [OPEN, MISTRAL].iter().filter_map(|m| held.find(m)).min() {
        return start;
    }
    // The longest tail of `held` that could still grow into a marker.
    (0..held.len())
        .filter(|&i| held.is_char_boundary(i))
        .find(|&i| OPEN.starts_with(&held[i..]) || MISTRAL.starts_with(&held[i..]))
        .unwrap_or(held.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermes_blocks_become_calls_and_the_rest_stays_text() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}";
        let parsed = parse(text, &["weather", "add"]);
        assert_eq!(parsed.content, "Let me check.");
        assert_eq!(parsed.calls.len(), 2);
        assert_eq!(parsed.calls[0].name, "weather");
        assert_eq!(parsed.calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(parsed.calls[1].name, "add");
        assert_ne!(parsed.calls[0].id, parsed.calls[1].id);
    }

    #[test]
    fn plain_json_is_a_call_only_of_an_offered_function() {
        let call = r#"{"name": "weather", "parameters": {"city": "Oslo"}}"#;
        assert_eq!(parse(call, &["weather"]).calls.len(), 1);
        assert_eq!(parse(call, &["other"]).calls.len(), 0);
        assert_eq!(parse(call, &["other"]).content, call);
        let list = r#"[{"name": "a", "arguments": {}}, {"name": "b", "arguments": "{}"}]"#;
        assert_eq!(parse(list, &["a", "b"]).calls.len(), 2);
        let bad = "<tool_call>{not json}</tool_call> after";
        assert_eq!(parse(bad, &["a"]).content, bad);
    }

    #[test]
    fn mistral_calls_after_the_marker_become_calls() {
        let text = r#"[TOOL_CALLS] [{"name": "weather", "arguments": {"city": "Rome"}}, {"name": "add", "arguments": {"a": 2}}]"#;
        let parsed = parse(text, &["weather", "add"]);
        assert_eq!(parsed.content, "");
        assert_eq!(parsed.calls.len(), 2);
        assert_eq!(parsed.calls[0].arguments, r#"{"city":"Rome"}"#);
        let with_text = format!("Checking.{text}");
        assert_eq!(parse(&with_text, &["weather", "add"]).content, "Checking.");
        // A marker before something that is no call of an offered function stays text.
        let other = r#"[TOOL_CALLS] [{"name": "rm", "arguments": {}}]"#;
        assert_eq!(parse(other, &["weather"]).content, other);
        assert_eq!(releasable("Sure [TOOL_", false), 5);
        assert_eq!(releasable("Sure [b]", false), 8);
    }

    #[test]
    fn streamed_text_is_held_where_a_call_may_begin() {
        assert_eq!(releasable("Hello <tool", false), 6);
        assert_eq!(releasable("Hello <b>", false), 9);
        assert_eq!(releasable("a<tool_call>{", false), 1);
        assert_eq!(releasable("  {\"name\"", true), 0);
        assert_eq!(releasable("Sure", true), 4);
    }
}
