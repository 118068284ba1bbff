//! Chat templates: the model's own Jinja template, rendered by a real template engine.

use anyhow::Context;
use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

/// One message of a conversation, with the fields Hugging Face chat templates read for
/// tool use: an assistant's `tool_calls` (`{"type": "function", "function": {"name",
/// "arguments": an object}}`), and a `tool` message's `tool_call_id` and `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// How a model writes the tool calls it makes, as its chat template shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallStyle {
    /// Hermes-style `<tool_call>{json}</tool_call>` blocks (Qwen2.5/Qwen3, and the text
    /// convention when tools reach the model as text).
    Tagged,
    /// Mistral's `[TOOL_CALLS]` marker followed by a JSON list of calls; the marker is
    /// the control token `marker` when the vocabulary has one.
    Mistral { marker: Option<u32> },
    /// A whole answer that is a JSON call, or a list of them (Llama 3.1).
    Json,
}

/// A compiled chat template.
///
/// Configured as Hugging Face transformers configures Jinja for chat templates
/// (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`), so that
/// templates written for it render the same here.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the template reads a `tools` variable (else tools go in as text).
    renders_tools: bool,
    /// Whether the template writes Hermes-style `<tool_call>` blocks (Qwen2.5/Qwen3).
    writes_tool_call_tags: bool,
    /// Whether the template writes Mistral's `[TOOL_CALLS]` marker.
    writes_mistral_calls: bool,
    bos_token: String,
    eos_token: String,
}

/// The template's name: no extension, so that no auto-escaping applies.
const NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .context("the model's chat template does not parse")?;
        Ok(ChatTemplate {
            env,
            renders_tools: source.contains("tools"),
            writes_tool_call_tags: source.contains("<tool_call>"),
            writes_mistral_calls: source.contains("[TOOL_CALLS]"),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    pub fn writes_tool_call_tags(&self) -> bool {
        self.writes_tool_call_tags
    }

    pub fn writes_mistral_calls(&self) -> bool {
        self.writes_mistral_calls
    }

    /// Renders the conversation; with `add_generation_prompt`, ends with the opening of
    /// the assistant's turn. `tools` (OpenAI's `{"type": "function", "function": …}`
    /// objects) go to the template's `tools` variable; none is passed when empty.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> anyhow::Result<String> {
        let template = self.env.get_template(NAME)?;
        let tools = (!tools.is_empty()).then_some(tools);
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|error| anyhow::anyhow!("rendering the chat template failed: {error:#}"))
    }
}
