//! Tool calling, shared by every endpoint that offers it (OpenAI's chat and Responses,
//! Anthropic's Messages, Ollama's chat): the `tools` and `tool_choice` a request offers in
//! OpenAI's shape ([`ToolSet`], checked here; the other APIs translate theirs), the
//! grammar that constrains the answer to text or schema-valid calls ([`constrain`]), and
//! the model's answer parsed back into calls ([`calls`]).

pub mod calls;

use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::params::{Grammar, Settings};
use crate::engine::ToolCallStyle;
use crate::engine::serve::loaded_model::LoadedModel;
use crate::engine::text::constraint::json_rule;

/// What the model may do with the tools.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Answer in text only (the tools are not shown to it).
    None,
    /// Call tools or answer in text, as it likes.
    Auto,
    /// Call one of the tools (constrained).
    Required,
    /// Call this function (constrained).
    Named(String),
}

/// The checked tools of a request.
#[derive(Debug, Clone)]
pub struct ToolSet {
    /// OpenAI's function objects, `{"type": "function", "function": {name, description,
    /// parameters}}`, as the chat template reads them.
    pub tools: Vec<Value>,
    pub choice: Choice,
    /// Whether the model may make more than one call in an answer (OpenAI's
    /// `parallel_tool_calls`, Anthropic's `disable_parallel_tool_use` negated).
    pub parallel: bool,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// Whether `name` is a valid function name (OpenAI's rule: a-z, A-Z, 0-9, _ and -, at
/// most 64).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks one tool (`tools[i]`): a function with a valid name and, if given, an object
/// schema for its parameters. Returns it as the template reads it.
fn check_tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    let kind = tool.get("type").and_then(Value::as_str);
    if kind != Some("function") {
        return Err(invalid(
            "tools",
            format!(
                "tools[{i}].type must be 'function', not {}",
                tool.get("type").unwrap_or(&Value::Null)
            ),
        ));
    }
    let Some(function) = tool.get("function").filter(|f| f.is_object()) else {
        return Err(invalid(
            "tools",
            format!("tools[{i}].function must be an object"),
        ));
    };
    let name = function.get("name").and_then(Value::as_str).unwrap_or("");
    if !valid_name(name) {
        return Err(invalid(
            "tools",
            format!(
                "tools[{i}].function.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -, not {:?}",
                name
            ),
        ));
    }
    let parameters = function
        .get("parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    if !parameters.is_object() {
        return Err(invalid(
            "tools",
            format!("tools[{i}].function.parameters must be a JSON Schema object"),
        ));
    }
    if let Some(kind) = parameters.get("type")
        && kind != "object"
    {
        return Err(invalid(
            "tools",
            format!("tools[{i}].function.parameters must describe an object, not type {kind}"),
        ));
    }
    let mut function = function.clone();
    function["parameters"] = parameters;
    Ok(json!({"type": "function", "function": function}))
}

/// Constrains what the model may answer when tools are offered ([`ToolSet::grammar`]);
/// a tool whose parameters are no usable schema is a 400 naming `tools`. A JSON
/// `response_format` under `auto` keeps its own grammar (the answer is JSON), and
/// `tool_choice: none` constrains nothing.
pub fn constrain(
    tools: Option<&ToolSet>,
    loaded: &LoadedModel,
    settings: &mut Settings,
) -> Result<(), ApiError> {
    let Some(tools) = tools else {
        return Ok(());
    };
    let grammar = Grammar {
        param: "tools",
        lark: tools.grammar(loaded.tokenizer().tool_call_style()),
    };
    loaded
        .grammars()
        .and_then(|g| g.matcher(&grammar.lark))
        .map_err(|e| {
            ApiError::invalid_param(
                "tools",
                format!("a tool's parameters cannot be used: {e:#}"),
            )
        })?;
    if tools.choice != Choice::None && (tools.forces_call() || settings.grammar.is_none()) {
        settings.grammar = Some(grammar);
    }
    Ok(())
}

/// Checks `tools` and `tool_choice`; None when the request offers no tools.
pub fn check_tools(
    tools: Option<&Value>,
    choice: Option<&Value>,
) -> Result<Option<ToolSet>, ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, tool)| check_tool(i, tool))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("tools", "tools must be an array of function tools")),
    };
    let names: Vec<&str> = tools
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    if let Some(dup) = names
        .iter()
        .enumerate()
        .find(|(i, n)| names[..*i].contains(n))
    {
        return Err(invalid(
            "tools",
            format!("the function '{}' is defined twice", dup.1),
        ));
    }
    let choice = match choice {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(invalid(
                    "tool_choice",
                    format!(
                        "tool_choice '{other}' is unknown; expected none, auto, required or a named function"
                    ),
                ));
            }
        },
        Some(object @ Value::Object(_)) => {
            let name = object
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| object.get("type").and_then(Value::as_str) == Some("function"));
            match name {
                Some(name) if names.contains(&name) => Choice::Named(name.to_string()),
                Some(name) => {
                    return Err(invalid(
                        "tool_choice",
                        format!(
                            "tool_choice names the function '{name}', which is not among the tools"
                        ),
                    ));
                }
                None => {
                    return Err(invalid(
                        "tool_choice",
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "tool_choice must be a string or an object",
            ));
        }
    };
    if tools.is_empty() {
        if choice != Choice::Auto && choice != Choice::None {
            return Err(invalid("tool_choice", "tool_choice needs tools"));
        }
        return Ok(None);
    }
    Ok(Some(ToolSet {
        tools,
        choice,
        parallel: true,
    }))
}

impl ToolSet {
    /// The same tools, with more than one call per answer allowed or not.
    pub fn with_parallel(self, parallel: bool) -> Self {
        ToolSet { parallel, ..self }
    }

    /// The tools shown to the model (none when it may not call them).
    pub fn offered(&self) -> &[Value] {
        match self.choice {
            Choice::None => &[],
            _ => &self.tools,
        }
    }

    /// The JSON schema of one call (`{"name": …, "arguments": …}`) to any of `names`.
    fn call_schema(&self, only: Option<&str>) -> Value {
        let variants: Vec<Value> = self
            .tools
            .iter()
            .map(|t| &t["function"])
            .filter(|f| only.is_none_or(|n| f["name"] == n))
            .map(|f| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        match variants.as_slice() {
            [one] => one.clone(),
            _ => json!({"anyOf": variants}),
        }
    }

    /// The grammar of what the model may answer: under a required or named choice only
    /// calls; under `auto` free text, or text then calls. Calls are written the way the
    /// model writes them (`style`): in `<tool_call>` tags, as a JSON list after Mistral's
    /// `[TOOL_CALLS]`, or as a whole answer that is a JSON call. Calls name an offered
    /// function and their arguments are valid against its schema; more than one when
    /// `parallel`.
    pub fn grammar(&self, style: ToolCallStyle) -> String {
        let only = match &self.choice {
            Choice::Named(name) => Some(name.as_str()),
            _ => None,
        };
        let call = json_rule(&self.call_schema(only));
        let more = if self.parallel {
            r#" ("\n<tool_call>\n" call "\n</tool_call>")*"#
        } else {
            ""
        };
        let list = if self.parallel {
            r#" | "[" call (", " call)* "]""#
        } else {
            ""
        };
        let rules = match (self.forces_call(), style) {
            (true, ToolCallStyle::Tagged) => {
                format!("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"{more}\n")
            }
            (true, ToolCallStyle::Json) => format!("start: call{list}\n"),
            (true, ToolCallStyle::Mistral { marker }) => {
                format!("start: mistral_calls\n{}", self.mistral_calls(marker))
            }
            // Text that holds no `<tool_call>`, or text up to the first one (a lazy
            // lexeme: it ends where the tag does) and then calls.
            (false, ToolCallStyle::Tagged) => format!(
                "start: TEXT | to_call \"\\n\" call \"\\n</tool_call>\"{more}\n{TO_CALL}{TEXT_WITHOUT_CALL}"
            ),
            // Text that does not open JSON, or a whole answer that is a call.
            (false, ToolCallStyle::Json) => format!("start: TEXT | call{list}\n{TEXT_NOT_JSON}"),
            // Text without the marker, or the marker and its list of calls.
            (false, ToolCallStyle::Mistral { marker }) => format!(
                "start: TEXT | mistral_calls\n{}{TEXT_WITHOUT_MISTRAL_MARKER}",
                self.mistral_calls(marker)
            ),
        };
        format!("{rules}call: {call}\n")
    }

    /// Mistral's calls: the `[TOOL_CALLS]` marker (its control token when the vocabulary
    /// has one, else the text), then a JSON list of one call or, when `parallel`, more.
    fn mistral_calls(&self, marker: Option<u32>) -> String {
        let marker = match marker {
            Some(id) => format!("<[{id}]>"),
            None => r#""[TOOL_CALLS]""#.to_string(),
        };
        let more = if self.parallel {
            r#" (", " call)*"#
        } else {
            ""
        };
        format!("mistral_calls: {marker} \" \"? \"[\" call{more} \"]\"\n")
    }

    /// An answer split into its text and its calls of `tools` (all text without tools).
    pub fn parse_answer(tools: Option<&ToolSet>, text: &str) -> calls::Parsed {
        match tools {
            Some(tools) => tools.parse(text),
            None => calls::Parsed {
                content: text.to_string(),
                calls: Vec::new(),
            },
        }
    }

    /// An answer split into its text and its calls of these tools.
    pub fn parse(&self, text: &str) -> calls::Parsed {
        let names: Vec<&str> = self
            .tools
            .iter()
            .filter_map(|t| t["function"]["name"].as_str())
            .collect();
        calls::parse(text, &names)
    }

    /// Whether the model must call a tool (its tokens are constrained to a call).
    pub fn forces_call(&self) -> bool {
        matches!(self.choice, Choice::Required | Choice::Named(_))
    }
}

/// Text up to the first `<tool_call>` (a lazy lexeme: it ends where the tag does).
const TO_CALL: &str = "to_call[lazy]: /(?s:.*)<tool_call>/\n";
/// Text that holds no `<tool_call>`.
const TEXT_WITHOUT_CALL: &str = "TEXT: /(?s:.*)/ & ~/(?s:.*)<tool_call>(?s:.*)/\n";
/// Text that holds no `[TOOL_CALLS]`.
const TEXT_WITHOUT_MISTRAL_MARKER: &str = "TEXT: /(?s:.*)/ & ~/(?s:.*)\\[TOOL_CALLS\\](?s:.*)/\n";
/// Text that does not open JSON (an untagged call is a whole answer of JSON).
const TEXT_NOT_JSON: &str = "TEXT: /(?s:.*)/ & ~/[ \\t\\n]*[\\[{](?s:.*)/\n";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use llguidance::api::TopLevelGrammar;
    use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
    use llguidance::{Matcher, ParserFactory};

    use super::*;

    /// Whether `grammar` allows `text` whole (over a vocabulary of single bytes).
    fn allows(grammar: &str, text: &str) -> bool {
        allows_tokens(grammar, &text.bytes().map(u32::from).collect::<Vec<_>>())
    }

    /// Whether `grammar` allows `tokens` whole: bytes 0..=254, then two special tokens
    /// (255 the end of sequence, 256 Mistral's marker).
    fn allows_tokens(grammar: &str, tokens: &[u32]) -> bool {
        let mut words: Vec<Vec<u8>> = (0..255u8).map(|b| vec![b]).collect();
        words.push(b"\xFF<eos>".to_vec());
        words.push(b"\xFF[TOOL_CALLS]".to_vec());
        let info = TokRxInfo::new(257, 255);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env).unwrap();
        factory.quiet();
        let parser = factory
            .create_parser(TopLevelGrammar::from_lark(grammar.to_string()))
            .unwrap();
        let mut matcher = Matcher::new(Ok(parser));
        matcher.validate_tokens(tokens).unwrap() == tokens.len()
            && matcher.consume_tokens(tokens).is_ok()
            && matcher.is_accepting().unwrap()
    }

    fn tools(choice: &str, parallel: bool) -> ToolSet {
        let tools = json!([{"type": "function", "function": {"name": "calculator",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                           "required": ["expression"]}}}]);
        check_tools(Some(&tools), Some(&json!(choice)))
            .unwrap()
            .unwrap()
            .with_parallel(parallel)
    }

    const CALL: &str = r#"{"name": "calculator", "arguments": {"expression": "1 + 2"}}"#;
    const BAD: &str = r#"{"name": "calculator", "arguments": {"expr": 3}}"#;

    #[test]
    fn auto_allows_text_or_text_then_schema_valid_calls() {
        let auto = tools("auto", true).grammar(ToolCallStyle::Tagged);
        let block = |call: &str| format!("<tool_call>\n{call}\n</tool_call>");
        assert!(allows(&auto, "Hello there, <b>friend</b>."));
        assert!(allows(&auto, &format!("Let me add.\n{}", block(CALL))));
        assert!(allows(&auto, &format!("{}\n{}", block(CALL), block(CALL))));
        assert!(!allows(&auto, &format!("Let me add.\n{}", block(BAD))));
        assert!(!allows(&auto, &format!("{} and more text", block(CALL))));
        let single = tools("auto", false).grammar(ToolCallStyle::Tagged);
        assert!(allows(&single, &block(CALL)));
        assert!(!allows(
            &single,
            &format!("{}\n{}", block(CALL), block(CALL))
        ));
    }

    #[test]
    fn required_allows_only_calls_and_untagged_calls_are_whole_json() {
        let required = tools("required", true).grammar(ToolCallStyle::Tagged);
        assert!(!allows(&required, "Hello"));
        assert!(allows(
            &required,
            &format!("<tool_call>\n{CALL}\n</tool_call>")
        ));
        let untagged = tools("auto", true).grammar(ToolCallStyle::Json);
        assert!(allows(&untagged, "Hello"));
        assert!(allows(&untagged, CALL));
        assert!(allows(&untagged, &format!("[{CALL}, {CALL}]")));
        assert!(!allows(&untagged, BAD));
    }

    #[test]
    fn mistral_calls_follow_the_marker_as_a_json_list() {
        let text_marker = ToolCallStyle::Mistral { marker: None };
        let auto = tools("auto", true).grammar(text_marker);
        assert!(allows(&auto, "Hello [there]"));
        assert!(allows(&auto, &format!("[TOOL_CALLS] [{CALL}, {CALL}]")));
        assert!(allows(&auto, &format!("[TOOL_CALLS][{CALL}]")));
        assert!(!allows(&auto, &format!("[TOOL_CALLS] [{BAD}]")));
        assert!(!allows(&auto, &format!("Sure. [TOOL_CALLS] [{CALL}]")));
        let required = tools("required", false).grammar(text_marker);
        assert!(!allows(&required, "Hello"));
        assert!(allows(&required, &format!("[TOOL_CALLS] [{CALL}]")));
        assert!(!allows(
            &required,
            &format!("[TOOL_CALLS] [{CALL}, {CALL}]")
        ));
        // With a control token for the marker, only that token opens the calls.
        let token = tools("required", false).grammar(ToolCallStyle::Mistral { marker: Some(256) });
        let list: Vec<u32> = format!(" [{CALL}]").bytes().map(u32::from).collect();
        assert!(allows_tokens(&token, &[&[256], &list[..]].concat()));
        assert!(!allows(&token, &format!("[TOOL_CALLS] [{CALL}]")));
    }
}
