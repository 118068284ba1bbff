//! OpenAI's Responses API (`POST /v1/responses`) through the official Python client's
//! `client.responses.create`, against a node serving the real Qwen2.5-Coder-0.5B: a string
//! input with instructions answers as the same conversation through chat completions
//! does (greedy); streamed, the documented events come in order and their deltas make the
//! whole text; function tools give `function_call` items, and a `function_call_output`
//! goes back in the next input; `text.format` json_schema answers validate.

use crate::harness::{NodeProcess, free_udp_port, run_python_client, wait_for_ring};
use crate::support::qwen_model;
use crate::support::venv::openai_python;

const CLIENT: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
model = "qwen2.5-coder-0.5b"
instructions = "Answer in one short sentence."
question = "What is the capital of France?"
out = {}
r = client.responses.create(model=model, instructions=instructions, input=question,
                            temperature=0, max_output_tokens=24)
out["whole"] = [r.status, r.output_text, r.output[0].type, r.usage.output_tokens, r.id]
chat = client.chat.completions.create(model=model, temperature=0, max_tokens=24, messages=[
    {"role": "system", "content": instructions}, {"role": "user", "content": question}])
out["chat"] = chat.choices[0].message.content
kinds, deltas, final = [], [], None
for event in client.responses.create(model=model, instructions=instructions, input=question,
                                     temperature=0, max_output_tokens=24, stream=True):
    if event.type.startswith("response."):
        if not kinds or kinds[-1] != event.type:
            kinds.append(event.type)
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    if event.type == "response.completed":
        final = event.response.output_text
out["streamed"] = [kinds, "".join(deltas), final]
short = client.responses.create(model=model, input=question, temperature=0, max_output_tokens=2)
out["short"] = [short.status, short.incomplete_details.reason if short.incomplete_details else None]

tools = [{"type": "function", "name": "calculator", "description": "Evaluates an arithmetic expression",
          "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                         "required": ["expression"]}}]
task = [{"role": "user", "content": "What is 37 times 91? Use the calculator."}]
first = client.responses.create(model=model, input=task, tools=tools, tool_choice="required",
                                temperature=0, max_output_tokens=60)
calls = [item for item in first.output if item.type == "function_call"]
out["call"] = [[c.name, c.arguments, c.call_id] for c in calls]
kinds = []
for event in client.responses.create(model=model, input=task, tools=tools, tool_choice="required",
                                     temperature=0, max_output_tokens=60, stream=True):
    if event.type.startswith("response.") and (not kinds or kinds[-1] != event.type):
        kinds.append(event.type)
    if event.type == "response.completed":
        streamed_calls = [[i.name, i.arguments] for i in event.response.output if i.type == "function_call"]
out["streamed_call"] = [kinds, streamed_calls]
if calls:
    history = task + [{"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name,
                       "arguments": calls[0].arguments},
                      {"type": "function_call_output", "call_id": calls[0].call_id, "output": "3367"}]
    second = client.responses.create(model=model, input=history, tools=tools, tool_choice="none",
                                     temperature=0, max_output_tokens=60)
    out["second"] = [second.status, second.output_text, [i.type for i in second.output]]
schema = {"type": "object", "properties": {"city": {"type": "string"},
          "country": {"type": "string", "enum": ["France", "Germany", "Italy"]}},
          "required": ["city", "country"], "additionalProperties": False}
j = client.responses.create(model=model, input="Name a city in Europe.", temperature=0, max_output_tokens=40,
                            text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}})
out["json"] = [j.output_text, schema]
try:
    client.responses.create(model=model, input=[{"type": "nonsense"}])
    out["refusal"] = "accepted"
except openai.BadRequestError as error:
    out["refusal"] = [error.status_code, error.body["param"], error.body["message"]]
print(json.dumps(out))
"#;

/// The kinds of a streamed response's events, in order (a run of one kind counted once):
/// the opening, one output item's `inner` events, the end.
fn check_events(kinds: &serde_json::Value, inner: &[&str]) {
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ];
    expected.extend_from_slice(inner);
    expected.extend(["response.output_item.done", "response.completed"]);
    assert_eq!(kinds, &serde_json::json!(expected));
}

#[test]
fn the_responses_api_works_through_the_official_openai_client() {
    let python = openai_python();
    qwen_model();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_model(
        dir.path(),
        "responses",
        free_udp_port(),
        "qwen2.5-coder-0.5b",
    );
    wait_for_ring(&node, 1);
    let out = run_python_client(python, CLIENT, &node, "");

    // Whole: the same greedy answer as the chat completion of the same conversation.
    let whole = &out["whole"];
    assert_eq!(whole[0], "completed", "{out}");
    assert_eq!(whole[1], out["chat"], "{out}");
    assert!(!whole[1].as_str().unwrap().is_empty(), "{out}");
    assert_eq!(whole[2], "message");
    assert!(whole[3].as_u64().unwrap() > 0);
    assert!(whole[4].as_str().unwrap().starts_with("resp_"), "{out}");
    // Streamed: the documented events in order, deltas that make the whole text.
    let [kinds, deltas, last] = out["streamed"].as_array().unwrap().as_slice() else {
        panic!("{out}")
    };
    check_events(
        kinds,
        &[
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
        ],
    );
    assert_eq!(deltas, &whole[1]);
    assert_eq!(last, &whole[1]);
    assert_eq!(
        out["short"],
        serde_json::json!(["incomplete", "max_output_tokens"])
    );

    // Tools: a forced call is a function_call item with valid JSON arguments, streamed
    // as its events; its output goes back as a function_call_output item.
    let call = &out["call"][0];
    assert_eq!(call[0], "calculator", "{out}");
    let arguments: serde_json::Value = serde_json::from_str(call[1].as_str().unwrap()).unwrap();
    assert!(arguments["expression"].is_string(), "{out}");
    assert!(call[2].as_str().unwrap().starts_with("call_"));
    let [kinds, calls] = out["streamed_call"].as_array().unwrap().as_slice() else {
        panic!("{out}")
    };
    check_events(
        kinds,
        &[
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
        ],
    );
    assert_eq!(calls[0][0], call[0]);
    assert_eq!(calls[0][1], call[1]);
    let second = &out["second"];
    assert_eq!(second[0], "completed", "{out}");
    assert_eq!(second[2], serde_json::json!(["message"]), "{out}");
    assert!(second[1].as_str().unwrap().contains("3367"), "{out}");

    // text.format json_schema: the answer validates.
    let answer: serde_json::Value = serde_json::from_str(out["json"][0].as_str().unwrap()).unwrap();
    let validator = jsonschema::validator_for(&out["json"][1]).unwrap();
    assert!(validator.is_valid(&answer), "{answer}");
    assert_eq!(out["refusal"][0], 400, "{out}");
    assert_eq!(out["refusal"][1], "input", "{out}");
}
