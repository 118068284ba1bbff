//! Agents written against Anthropic's and Ollama's official Python clients, pointed at a
//! node serving the real Qwen2.5-Coder-0.5B: a tool loop (a calculator and a weather
//! stub) through `/v1/messages` that calls the calculator, feeds its result back as a
//! `tool_result` and ends with the answer in text; the same call streamed (its
//! `input_json_delta` events, the SDK's own accumulation); and a chat with a tool call
//! and its result through `/api/chat`. The first step's tools are `auto` (the model
//! decides to call); once the result is in, the step that answers offers them with
//! `tool_choice: none` (the 0.5B model would otherwise call again).

use crate::harness::{NodeProcess, free_udp_port, run_python_client, wait_for_ring};
use crate::support::qwen_model;
use crate::support::venv::{anthropic_python, ollama_python};
use crate::tools::OPENAI_TOOLS;

/// The tools' own code, shared by both clients: a calculator of plain arithmetic and a
/// weather stub.
const TOOLS: &str = r#"
import json, re, sys
TASK = "What is 37 times 91? Use the calculator."
def run_tool(name, arguments):
    if name == "calculator":
        expression = str(arguments.get("expression", ""))
        if not re.fullmatch(r"[0-9+\-*/(). ]+", expression):
            return "error: not an arithmetic expression"
        return str(eval(expression, {"__builtins__": {}}))
    if name == "get_weather":
        return "18 degrees celsius and sunny"
    return "error: no such tool"
"#;

const ANTHROPIC: &str = r#"
import anthropic
client = anthropic.Anthropic(base_url=sys.argv[1], api_key="unused", max_retries=0)
model = "qwen2.5-coder-0.5b"
tools = [
    {"name": "get_weather", "description": "The current weather in a city",
     "input_schema": {"type": "object", "properties": {
         "city": {"type": "string"},
         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
         "required": ["city", "unit"]}},
    {"name": "calculator", "description": "Evaluates an arithmetic expression",
     "input_schema": {"type": "object", "properties": {"expression": {"type": "string"}},
                      "required": ["expression"]}},
]
out = {"tools": tools}
messages = [{"role": "user", "content": TASK}]
steps = []
for step in range(4):
    # Once a result is in, the 0.5B model would call again: the loop asks for the answer.
    choice = {"type": "none"} if step else {"type": "auto"}
    r = client.messages.create(model=model, max_tokens=80, temperature=0, tools=tools,
                               tool_choice=choice, messages=messages)
    content = [b.model_dump(exclude_none=True) for b in r.content]
    steps.append([r.stop_reason, content])
    if r.stop_reason != "tool_use":
        break
    messages.append({"role": "assistant", "content": content})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": b["id"], "content": run_tool(b["name"], b["input"])}
        for b in content if b["type"] == "tool_use"]})
out["steps"] = steps

# Forced (any tool), whole and streamed: the events, and the SDK's accumulation.
weather = [{"role": "user", "content": "What is the weather in Paris right now?"}]
forced = dict(model=model, max_tokens=80, temperature=0, tools=tools, messages=weather,
              tool_choice={"type": "any", "disable_parallel_tool_use": True})
whole = client.messages.create(**forced)
out["forced"] = [whole.stop_reason, [b.model_dump(exclude_none=True) for b in whole.content]]
kinds = []
for event in client.messages.create(stream=True, **forced):
    kind = event.type + ("." + event.delta.type if event.type == "content_block_delta" else "")
    if event.type == "content_block_start":
        kind += "." + event.content_block.type
    if not kinds or kinds[-1] != kind:
        kinds.append(kind)
out["kinds"] = kinds
with client.messages.stream(**forced) as stream:
    final = stream.get_final_message()
out["accumulated"] = [final.stop_reason, [b.model_dump(exclude_none=True) for b in final.content]]

refusals = {}
for name, kwargs in [
    ("server_tool", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
    ("unknown_choice", {"tools": tools, "tool_choice": {"type": "sometimes"}}),
    ("unknown_tool", {"tools": tools, "tool_choice": {"type": "tool", "name": "nope"}}),
    ("bad_schema", {"tools": [{"name": "f", "input_schema": {"type": "object",
        "properties": {"a": {"type": "nonsense"}}}}]}),
]:
    try:
        client.messages.create(model=model, max_tokens=8, messages=weather, **kwargs)
        refusals[name] = "accepted"
    except anthropic.APIStatusError as error:
        refusals[name] = [error.status_code, error.body["error"]["type"], error.body["error"]["message"]]
out["refusals"] = refusals
print(json.dumps(out))
"#;

const OLLAMA: &str = r#"
import ollama
client = ollama.Client(host=sys.argv[1])
model = "qwen2.5-coder-0.5b"
greedy = {"temperature": 0, "num_predict": 80}
messages = [{"role": "user", "content": TASK}]
first = client.chat(model=model, messages=messages, tools=tools, options=greedy)
calls = first.message.tool_calls or []
out = {"first": [first.message.content, [[c.function.name, dict(c.function.arguments)] for c in calls],
                 first.done_reason]}
pieces, streamed_calls = [], []
for chunk in client.chat(model=model, messages=messages, tools=tools, options=greedy, stream=True):
    pieces.append(chunk.message.content or "")
    streamed_calls += [[c.function.name, dict(c.function.arguments)] for c in chunk.message.tool_calls or []]
out["streamed"] = ["".join(pieces), streamed_calls]
messages.append(first.message)
for c in calls:
    messages.append({"role": "tool", "tool_name": c.function.name,
                     "content": run_tool(c.function.name, c.function.arguments)})
# The answer, with the result in the history (tools no longer offered).
second = client.chat(model=model, messages=messages, options=greedy)
out["second"] = [second.message.content, len(second.message.tool_calls or [])]
print(json.dumps(out))
"#;

/// Checks that `input` validates against the schema of the tool `name` in `tools`
/// (Anthropic's `input_schema` or OpenAI's `function.parameters`).
fn assert_valid(name: &str, input: &serde_json::Value, tools: &serde_json::Value) {
    let schema = tools
        .as_array()
        .unwrap()
        .iter()
        .find_map(|t| {
            (t["name"] == name)
                .then(|| &t["input_schema"])
                .or_else(|| (t["function"]["name"] == name).then(|| &t["function"]["parameters"]))
        })
        .unwrap_or_else(|| panic!("{name} is not an offered tool"));
    let validator = jsonschema::validator_for(schema).unwrap();
    assert!(validator.is_valid(input), "{name}: {input}");
}

#[test]
fn agents_call_tools_through_the_anthropic_and_ollama_clients() {
    let (anthropic, ollama) = (anthropic_python(), ollama_python());
    qwen_model();
    let dir = tempfile::tempdir().unwrap();
    let node =
        NodeProcess::start_model(dir.path(), "agents", free_udp_port(), "qwen2.5-coder-0.5b");
    wait_for_ring(&node, 1);

    // Anthropic: the loop calls the calculator, then answers with its result.
    let out = run_python_client(anthropic, &format!("{TOOLS}{ANTHROPIC}"), &node, "");
    let steps = out["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{out}");
    assert_eq!(steps[0][0], "tool_use", "{out}");
    let uses: Vec<&serde_json::Value> = steps[0][1]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .collect();
    assert_eq!(uses.len(), 1, "{out}");
    assert_eq!(uses[0]["name"], "calculator", "{out}");
    assert!(
        uses[0]["id"].as_str().unwrap().starts_with("toolu_"),
        "{out}"
    );
    assert_valid("calculator", &uses[0]["input"], &out["tools"]);
    let expression = uses[0]["input"]["expression"].to_string();
    assert!(
        expression.contains("37") && expression.contains("91"),
        "{out}"
    );
    assert_eq!(steps[1][0], "end_turn", "{out}");
    let answer = &steps[1][1][0];
    assert_eq!(answer["type"], "text", "{out}");
    assert!(answer["text"].as_str().unwrap().contains("3367"), "{out}");

    // Forced: one schema-valid call; streamed as the documented events, which the SDK
    // accumulates into the same call.
    assert_eq!(out["forced"][0], "tool_use", "{out}");
    let forced = out["forced"][1].as_array().unwrap();
    assert_eq!(forced.len(), 1, "{out}");
    assert_eq!(forced[0]["name"], "get_weather", "{out}");
    assert_valid("get_weather", &forced[0]["input"], &out["tools"]);
    assert_eq!(forced[0]["input"]["city"], "Paris", "{out}");
    assert_eq!(
        out["kinds"],
        serde_json::json!([
            "message_start",
            "content_block_start.tool_use",
            "content_block_delta.input_json_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]),
        "{out}"
    );
    assert_eq!(out["accumulated"][0], "tool_use");
    let accumulated = &out["accumulated"][1][0];
    assert_eq!(accumulated["name"], forced[0]["name"]);
    assert_eq!(accumulated["input"], forced[0]["input"]);

    // Refusals name what is wrong, in Anthropic's error shape.
    let refusals = &out["refusals"];
    for (name, says) in [
        ("server_tool", "web_search_20250305"),
        ("unknown_choice", "sometimes"),
        ("unknown_tool", "nope"),
        ("bad_schema", "nonsense"),
    ] {
        let refusal = &refusals[name];
        assert_eq!(refusal[0], 400, "{name}: {refusals}");
        assert_eq!(refusal[1], "invalid_request_error", "{name}: {refusals}");
        assert!(
            refusal[2].as_str().unwrap().contains(says),
            "{name}: {refusals}"
        );
    }

    // Ollama: the same task, a call in `message.tool_calls`, streamed the same, and
    // the answer with the result in the history.
    let script = format!("{TOOLS}{OPENAI_TOOLS}{OLLAMA}");
    let out = run_python_client(ollama, &script, &node, "");
    let calls = out["first"][1].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{out}");
    assert_eq!(calls[0][0], "calculator", "{out}");
    assert_valid(
        "calculator",
        &calls[0][1],
        &serde_json::json!([
            {"function": {"name": "calculator", "parameters": {"type": "object",
                "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
        ]),
    );
    assert_eq!(out["first"][2], "stop", "{out}");
    assert_eq!(out["streamed"][1], out["first"][1], "{out}");
    assert_eq!(out["streamed"][0], out["first"][0], "{out}");
    assert!(out["second"][0].as_str().unwrap().contains("3367"), "{out}");
    assert_eq!(out["second"][1], 0, "{out}");
}
