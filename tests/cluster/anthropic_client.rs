//! The official Anthropic Python client, pointed at a node, works as against Anthropic's
//! Messages API: whole and streamed answers (its event types, and the SDK's own
//! accumulation of them), system prompts and content blocks, stop sequences and
//! `max_tokens` as `stop_reason`, and refusals of what this server does not do (tools: tests/cluster/agent_clients.rs).

use crate::e2e::{PROMPT, generate_locally};
use crate::harness::{NodeProcess, free_udp_port, post_json, run_python_client, wait_for_ring};
use crate::support::default_model;
use crate::support::venv::anthropic_python;

const SYSTEM: &str = "You are a geography teacher. Answer in one sentence.";

const CLIENT: &str = r#"
import json, sys
import anthropic

url, prompt, stop, system = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
model = "smollm2-135m"
messages = [{"role": "user", "content": prompt}]
answer = client.messages.create(model=model, max_tokens=32, temperature=0, messages=messages)
kinds, pieces = [], []
for event in client.messages.create(model=model, max_tokens=32, temperature=0,
                                    messages=messages, stream=True):
    if not kinds or kinds[-1] != event.type:
        kinds.append(event.type)
    if event.type == "content_block_delta":
        pieces.append(event.delta.text)
    if event.type == "message_delta":
        streamed_stop = [event.delta.stop_reason, event.usage.output_tokens]
with client.messages.stream(model=model, max_tokens=32, temperature=0, messages=messages) as stream:
    accumulated = stream.get_final_message()
with_system = client.messages.create(
    model=model, max_tokens=32, temperature=0,
    system=[{"type": "text", "text": system}],
    messages=[{"role": "user", "content": [{"type": "text", "text": prompt}]}],
)
stopped = client.messages.create(model=model, max_tokens=32, temperature=0,
                                 messages=messages, stop_sequences=[stop])
short = client.messages.create(model=model, max_tokens=4, temperature=0, messages=messages)
refusals = {}
for name, call in [
    ("model", lambda: client.messages.create(model="claude-nope", max_tokens=8, messages=messages)),
    ("image", lambda: client.messages.create(model=model, max_tokens=8, messages=[
        {"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
    ])),
    ("tool_use_by_user", lambda: client.messages.create(model=model, max_tokens=8, messages=[
        {"role": "user", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
    ])),
    ("temperature", lambda: client.messages.create(
        model=model, max_tokens=8, messages=messages, temperature=1.5)),
]:
    try:
        call()
        refusals[name] = "accepted"
    except anthropic.APIStatusError as error:
        refusals[name] = [error.status_code, error.body["error"]["type"], error.body["error"]["message"]]
print(json.dumps({
    "id": answer.id,
    "type": answer.type,
    "role": answer.role,
    "text": answer.content[0].text,
    "stop": [answer.stop_reason, answer.stop_sequence],
    "usage": [answer.usage.input_tokens, answer.usage.output_tokens],
    "kinds": kinds,
    "streamed": "".join(pieces),
    "streamed_stop": streamed_stop,
    "accumulated": [accumulated.content[0].text, accumulated.stop_reason,
                    accumulated.usage.output_tokens],
    "with_system": with_system.content[0].text,
    "stopped": [stopped.content[0].text, stopped.stop_reason, stopped.stop_sequence],
    "short": [short.stop_reason, short.usage.output_tokens],
    "refusals": refusals,
}))
"#;

#[test]
fn the_official_anthropic_python_client_works_against_a_node() {
    let python = anthropic_python();
    default_model();
    let expected = generate_locally(PROMPT, 32);
    // A stop sequence inside the answer: its third word.
    let stop = expected.split_whitespace().nth(2).expect("a longer answer");
    let before_stop = &expected[..expected.find(stop).unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), "anthropic", free_udp_port());
    wait_for_ring(&node, 1);
    let script = CLIENT.replace("sys.argv[3], sys.argv[4]", &format!("{stop:?}, {SYSTEM:?}"));
    let result = run_python_client(python, &script, &node, PROMPT);

    // Whole and streamed: the greedy answer of the chat template, ended by the model.
    assert!(
        result["id"].as_str().unwrap().starts_with("msg_"),
        "{result}"
    );
    assert_eq!(result["type"], "message");
    assert_eq!(result["role"], "assistant");
    assert_eq!(result["text"], expected.as_str(), "{result}");
    assert_eq!(result["stop"], serde_json::json!(["end_turn", null]));
    let output_tokens = &result["usage"][1];
    assert!(result["usage"][0].as_u64().unwrap() > 5, "{result}");
    assert_eq!(result["streamed"], expected.as_str());
    // The events in order (the SDK passes no `ping` on).
    assert_eq!(
        result["kinds"],
        serde_json::json!([
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ])
    );
    assert_eq!(
        result["streamed_stop"],
        serde_json::json!(["end_turn", output_tokens])
    );
    assert_eq!(
        result["accumulated"],
        serde_json::json!([expected, "end_turn", output_tokens])
    );

    // A system prompt in blocks answers what OpenAI's endpoint answers with it.
    let openai = serde_json::json!({
        "model": "smollm2-135m",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 32,
        "temperature": 0,
    });
    let (status, body) = post_json(&format!("{}/v1/chat/completions", node.url()), &openai);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        result["with_system"],
        body["choices"][0]["message"]["content"]
    );

    // A stop sequence ends the answer before it and is named; max_tokens is a reason.
    assert_eq!(
        result["stopped"],
        serde_json::json!([before_stop, "stop_sequence", stop])
    );
    assert_eq!(result["short"], serde_json::json!(["max_tokens", 4]));

    // What is not supported is refused with Anthropic's error shape, by name.
    let refusals = &result["refusals"];
    let refused = |name: &str, status: u64, kind: &str, words: &str| {
        let refusal = &refusals[name];
        assert_eq!(refusal[0], status, "{name}: {refusals}");
        assert_eq!(refusal[1], kind, "{name}: {refusals}");
        let message = refusal[2].as_str().unwrap();
        assert!(message.contains(words), "{name}: {message}");
    };
    refused("model", 404, "not_found_error", "claude-nope");
    refused("image", 400, "invalid_request_error", "'image'");
    refused("tool_use_by_user", 400, "invalid_request_error", "tool_use");
    refused("temperature", 400, "invalid_request_error", "temperature");
}
