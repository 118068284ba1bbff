//! Tool calling and structured output through the official OpenAI Python client, against
//! a node serving the real Qwen2.5-Coder-0.5B (whose chat template renders tools):
//! a forced call (required, and a named function) comes back as `message.tool_calls`
//! whose arguments validate against the function's schema; the streamed deltas
//! reassemble to the same call; an unforced (greedy) answer of a real model calls the
//! calculator, and a two-step agent loop feeds the result back; `json_schema` answers all
//! parse and validate; a bad schema, a malformed tool and an unknown tool_choice are 400s
//! naming the parameter.

use crate::harness::{NodeProcess, free_udp_port, run_python_client, wait_for_ring};
use crate::support::qwen_model;
use crate::support::venv::openai_python;

/// The tools the agent tests offer, in OpenAI's shape (a Python assignment to `tools`):
/// a weather stub and a calculator.
pub const OPENAI_TOOLS: &str = r#"
tools = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "calculator", "description": "Evaluates an arithmetic expression",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
]
"#;

const CLIENT: &str = r#"
import json, sys
import openai

url = sys.argv[1]
client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
model = "qwen2.5-coder-0.5b"
weather = [{"role": "user", "content": "What is the weather in Paris right now?"}]

def call(message):
    return [[c.function.name, c.function.arguments, c.id, c.type] for c in (message.tool_calls or [])]

out = {"tools": tools}
for key, choice in [("required", "required"),
                    ("named", {"type": "function", "function": {"name": "calculator"}})]:
    r = client.chat.completions.create(model=model, messages=weather, tools=tools,
                                       tool_choice=choice, temperature=0, max_tokens=80)
    out[key] = [r.choices[0].finish_reason, r.choices[0].message.content, call(r.choices[0].message)]

# Streamed: the SDK's own accumulation of the deltas.
with client.beta.chat.completions.stream(model=model, messages=weather, tools=tools,
                                         tool_choice="required", temperature=0, max_tokens=80) as stream:
    final = stream.get_final_completion()
out["streamed"] = [final.choices[0].finish_reason, call(final.choices[0].message)]

# Unforced: the model decides to call (greedy, so every run decides the same).
task = [{"role": "user", "content": "What is 37 times 91? Use the calculator."}]
first = client.chat.completions.create(model=model, messages=task, tools=tools,
                                       temperature=0, max_tokens=80)
out["auto"] = [first.choices[0].finish_reason, call(first.choices[0].message)]
again = client.chat.completions.create(model=model, messages=task, tools=tools,
                                       temperature=0, max_tokens=80)
out["auto_again"] = call(again.choices[0].message)
# The agent loop's second step: the calculator's result back, an answer in text.
calls = first.choices[0].message.tool_calls or []
if calls:
    history = task + [first.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": calls[0].id, "content": str(37 * 91)}]
    second = client.chat.completions.create(model=model, messages=history, tools=tools,
                                            tool_choice="none", temperature=0, max_tokens=60)
    out["second"] = [second.choices[0].finish_reason, second.choices[0].message.content,
                     call(second.choices[0].message)]

schema = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "role": {"type": "string", "enum": ["admin", "user", "guest"]}},
    "required": ["name", "age", "role"], "additionalProperties": False}
out["schema"] = schema
answers = []
subjects = ["a user of a web site", "a pilot", "a child", "a chess player", "a baker", "a robot"]
for i, subject in enumerate(subjects):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Describe {subject}."}],
        temperature=0.9, seed=i, max_tokens=60,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema, "strict": True}})
    answers.append([r.choices[0].finish_reason, r.choices[0].message.content])
r = client.chat.completions.create(model=model, temperature=0, max_tokens=60,
    messages=[{"role": "user", "content": "Name a colour."}], response_format={"type": "json_object"})
answers.append([r.choices[0].finish_reason, r.choices[0].message.content])
out["answers"] = answers

refusals = {}
for name, kwargs in [
    ("bad_schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "x",
        "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}}),
    ("bad_tool", {"tools": [{"type": "function", "function": {"name": "has space"}}]}),
    ("bad_parameters", {"tools": [{"type": "function", "function": {"name": "f",
        "parameters": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}]}),
    ("unknown_choice", {"tools": tools, "tool_choice": "sometimes"}),
    ("unknown_function", {"tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
]:
    try:
        client.chat.completions.create(model=model, messages=weather, max_tokens=8, **kwargs)
        refusals[name] = "accepted"
    except openai.BadRequestError as error:
        refusals[name] = [error.status_code, error.body["param"], error.body["message"]]
out["refusals"] = refusals
print(json.dumps(out))
"#;

/// The arguments of a call, parsed, after checking they validate against the schema of
/// the function it names.
fn checked_arguments(call: &serde_json::Value, tools: &serde_json::Value) -> serde_json::Value {
    let name = call[0].as_str().unwrap();
    let arguments: serde_json::Value = serde_json::from_str(call[1].as_str().unwrap())
        .unwrap_or_else(|e| panic!("arguments of {name} are not JSON ({e}): {call}"));
    let tool = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not an offered function"));
    let validator = jsonschema::validator_for(&tool["function"]["parameters"]).unwrap();
    assert!(validator.is_valid(&arguments), "{name}: {arguments}");
    assert!(call[2].as_str().unwrap().starts_with("call_"), "{call}");
    assert_eq!(call[3], "function");
    arguments
}

#[test]
fn tools_and_json_schemas_work_through_the_official_openai_client() {
    let python = openai_python();
    qwen_model();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_model(dir.path(), "tools", free_udp_port(), "qwen2.5-coder-0.5b");
    wait_for_ring(&node, 1);
    let out = run_python_client(python, &format!("{OPENAI_TOOLS}{CLIENT}"), &node, "");
    let tools = &out["tools"];

    // Forced calls: exactly one call, valid against its function's schema.
    for key in ["required", "named"] {
        let [reason, content, calls] = out[key].as_array().unwrap().as_slice() else {
            panic!("{out}")
        };
        assert_eq!(reason, "tool_calls", "{key}: {out}");
        assert!(content.is_null(), "{key}: {out}");
        assert_eq!(calls.as_array().unwrap().len(), 1, "{key}: {out}");
        checked_arguments(&calls[0], tools);
    }
    assert_eq!(out["named"][2][0][0], "calculator");
    // The weather question, forced to call something, asks for the weather in Paris.
    let required = checked_arguments(&out["required"][2][0], tools);
    assert_eq!(out["required"][2][0][0], "get_weather", "{out}");
    assert_eq!(required["city"], "Paris", "{out}");

    // Streamed deltas reassemble (by the SDK) to the same call.
    assert_eq!(out["streamed"][0], "tool_calls", "{out}");
    let streamed = &out["streamed"][1][0];
    assert_eq!(streamed[0], out["required"][2][0][0]);
    assert_eq!(streamed[1], out["required"][2][0][1]);

    // Unforced: the real model calls the calculator on its own, the same way each time,
    // and answers with the result once it has it.
    assert_eq!(out["auto"][0], "tool_calls", "{out}");
    let auto = &out["auto"][1][0];
    assert_eq!(auto[0], "calculator", "{out}");
    let expression = checked_arguments(auto, tools)["expression"].to_string();
    assert!(
        expression.contains("37") && expression.contains("91"),
        "{out}"
    );
    assert_eq!(out["auto_again"][0][1], auto[1]);
    let second = &out["second"];
    assert_eq!(second[0], "stop", "{out}");
    assert_eq!(second[2], serde_json::json!([]), "{out}");
    assert!(second[1].as_str().unwrap().contains("3367"), "{out}");

    // Every constrained answer parses and validates; json_object gives an object.
    let validator = jsonschema::validator_for(&out["schema"]).unwrap();
    let answers = out["answers"].as_array().unwrap();
    let (last, schema_answers) = answers.split_last().unwrap();
    for answer in schema_answers {
        assert_eq!(answer[0], "stop", "{answer}");
        let value: serde_json::Value = serde_json::from_str(answer[1].as_str().unwrap())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"));
        assert!(validator.is_valid(&value), "{value}");
    }
    let object: serde_json::Value = serde_json::from_str(last[1].as_str().unwrap()).unwrap();
    assert!(object.is_object(), "{last}");

    // Refusals: 400 with OpenAI's error body, naming the parameter and what is wrong.
    let refusals = &out["refusals"];
    for (name, param, says) in [
        ("bad_schema", "response_format", "nonsense"),
        ("bad_tool", "tools", "has space"),
        ("bad_parameters", "tools", "nonsense"),
        ("unknown_choice", "tool_choice", "sometimes"),
        ("unknown_function", "tool_choice", "nope"),
    ] {
        let refusal = &refusals[name];
        assert_eq!(refusal[0], 400, "{name}: {refusals}");
        assert_eq!(refusal[1], param, "{name}: {refusals}");
        assert!(
            refusal[2].as_str().unwrap().contains(says),
            "{name}: {refusals}"
        );
    }
}
