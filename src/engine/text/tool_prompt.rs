//! Tools for a chat template that knows nothing of them: the tool definitions and the
//! calling convention go into the system prompt as text (the Hermes format Qwen2.5 and
//! many fine-tunes are trained on), an assistant's calls become `<tool_call>` blocks of
//! its text, and tool results user turns of `<tool_response>` blocks.

use super::chat_template::ChatMessage;

/// The instructions that open the system prompt when tools are offered.
fn instructions(tools: &[serde_json::Value]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        text.push('\n');
        text.push_str(&tool.to_string());
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

/// One call as the Hermes format writes it.
pub fn call_block(call: &serde_json::Value) -> String {
    let function = call.get("function").unwrap_or(call);
    let body = serde_json::json!({
        "name": function.get("name").cloned().unwrap_or_default(),
        "arguments": function.get("arguments").cloned().unwrap_or_default(),
    });
    format!("<tool_call>\n{body}\n</tool_call>")
}

/// The conversation with its tools written as text, for a template without `tools`.
pub fn tools_as_text(messages: &[ChatMessage], tools: &[serde_json::Value]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let tools_text = instructions(tools);
        match messages.first() {
            Some(first) if first.role == "system" => {
                out.push(ChatMessage::new(
                    "system",
                    format!("{}\n\n{tools_text}", first.content),
                ));
            }
            _ => out.push(ChatMessage::new("system", tools_text)),
        }
    }
    let skip =
        usize::from(!tools.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
    for message in &messages[skip..] {
        match (message.role.as_str(), &message.tool_calls) {
            ("assistant", Some(calls)) => {
                let mut text = message.content.clone();
                for call in calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&call_block(call));
                }
                out.push(ChatMessage::new("assistant", text));
            }
            ("tool", _) => {
                let block = format!("<tool_response>\n{}\n</tool_response>", message.content);
                // Results of one round of calls share a user turn.
                match out.last_mut() {
                    Some(last)
                        if last.role == "user" && last.content.ends_with("</tool_response>") =>
                    {
                        last.content.push('\n');
                        last.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::new("user", block)),
                }
            }
            _ => out.push(ChatMessage::new(
                message.role.clone(),
                message.content.clone(),
            )),
        }
    }
    out
}
