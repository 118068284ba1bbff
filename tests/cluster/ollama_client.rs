//! The official Ollama Python client, pointed at a node, works as against Ollama: chat
//! and generate, whole and streamed (newline-delimited JSON), the model list, details and
//! version, and refusals by name of what this server does not do yet.

use crate::e2e::{PROMPT, generate_locally};
use crate::harness::{NodeProcess, free_udp_port, post_json, run_python_client, wait_for_ring};
use crate::support::default_model;
use crate::support::venv::ollama_python;

const CLIENT: &str = r#"
import json, sys, urllib.request
import ollama

client = ollama.Client(host=sys.argv[1])
model = "smollm2-135m"
messages = [{"role": "user", "content": sys.argv[2]}]
greedy = {"temperature": 0, "num_predict": 32}
answer = client.chat(model=model, messages=messages, options=greedy)
pieces, last = [], None
for chunk in client.chat(model=model, messages=messages, options=greedy, stream=True):
    pieces.append(chunk.message.content)
    last = chunk
# The next turn, with the answer in the history (and Ollama's ":latest" tag).
turn = messages + [
    {"role": "assistant", "content": answer.message.content},
    {"role": "user", "content": "And of France?"},
]
second = client.chat(model=model + ":latest", messages=turn, options=greedy)
generated = client.generate(model=model, prompt="The capital of France is", raw=True,
                            options={"temperature": 0, "num_predict": 8})
generated_pieces = [c.response for c in client.generate(
    model=model, prompt="The capital of France is", raw=True, stream=True,
    options={"temperature": 0, "num_predict": 8})]
stopped = client.generate(model=model, prompt="The capital of France is", raw=True,
                          options={"temperature": 0, "num_predict": 8, "stop": ["."]})
preload = client.generate(model=model)
show = client.show(model)
refusals = {}
for name, call in [
    ("missing", lambda: client.chat(model="no-such-model", messages=messages)),
    ("format", lambda: client.chat(model=model, messages=messages, format="json")),
    ("bad_tool", lambda: client.chat(model=model, messages=messages, tools=[{
        "type": "function",
        "function": {"name": "add", "description": "adds", "parameters": {"type": "object",
            "properties": {"a": {"type": "nonsense"}}}},
    }])),
    ("role", lambda: client.chat(model=model, messages=[{"role": "robot", "content": "hi"}])),
    ("num_predict", lambda: client.generate(model=model, prompt="a", options={"num_predict": 0})),
]:
    try:
        call()
        refusals[name] = "accepted"
    except ollama.ResponseError as error:
        refusals[name] = [error.status_code, error.error]
version = json.load(urllib.request.urlopen(sys.argv[1] + "/api/version"))
print(json.dumps({
    "text": answer.message.content,
    "role": answer.message.role,
    "done_reason": answer.done_reason,
    "prompt_eval_count": answer.prompt_eval_count,
    "eval_count": answer.eval_count,
    "durations": [answer.total_duration, answer.prompt_eval_duration, answer.eval_duration],
    "streamed": "".join(pieces),
    "stream_done": [last.done, last.done_reason, last.eval_count],
    "second": second.message.content,
    "generated": generated.response,
    "generated_streamed": "".join(generated_pieces),
    "generated_done": [generated.done_reason, generated.eval_count],
    "stopped": [stopped.response, stopped.done_reason],
    "preload": [preload.done, preload.done_reason, preload.response],
    "tags": [[m.model, m.size, m.details.family] for m in client.list().models],
    "ps": [m.model for m in client.ps().models],
    "show": [show.details.family, show.modelinfo.get("llama.context_length"),
             show.modelinfo.get("llama.block_count"), show.capabilities],
    "version": version["version"],
    "refusals": refusals,
}))
"#;

#[test]
fn the_official_ollama_python_client_works_against_a_node() {
    let python = ollama_python();
    default_model();
    let expected = generate_locally(PROMPT, 32);
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), "ollama", free_udp_port());
    wait_for_ring(&node, 1);
    let result = run_python_client(python, CLIENT, &node, PROMPT);

    // Chat: the greedy answer of the chat template, whole and streamed alike.
    assert_eq!(result["text"], expected.as_str(), "{result}");
    assert_eq!(result["streamed"], expected.as_str(), "{result}");
    assert_eq!(result["role"], "assistant");
    assert_eq!(result["done_reason"], "stop");
    assert_eq!(
        result["stream_done"],
        serde_json::json!([true, "stop", result["eval_count"]])
    );
    assert!(
        result["prompt_eval_count"].as_u64().unwrap() > 5,
        "{result}"
    );
    assert!(result["eval_count"].as_u64().unwrap() > 0, "{result}");
    for duration in result["durations"].as_array().unwrap() {
        assert!(duration.as_u64().unwrap() > 0, "{result}");
    }

    // The next turn answers what OpenAI's endpoint answers for the same history.
    let history = serde_json::json!({
        "model": "smollm2-135m",
        "messages": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": expected},
            {"role": "user", "content": "And of France?"},
        ],
        "max_tokens": 32,
        "temperature": 0,
    });
    let (status, body) = post_json(&format!("{}/v1/chat/completions", node.url()), &history);
    assert_eq!(status, 200, "{body}");
    assert_eq!(result["second"], body["choices"][0]["message"]["content"]);

    // Generate (raw): the continuation /v1/completions gives, 8 tokens, streamed alike;
    // a stop string ends it early.
    let completion = serde_json::json!({
        "model": "smollm2-135m",
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    });
    let (status, body) = post_json(&format!("{}/v1/completions", node.url()), &completion);
    assert_eq!(status, 200, "{body}");
    let continuation = body["choices"][0]["text"].as_str().unwrap();
    assert_eq!(result["generated"], continuation);
    assert_eq!(result["generated_streamed"], continuation);
    assert_eq!(result["generated_done"], serde_json::json!(["length", 8]));
    let cut = continuation
        .find('.')
        .expect("the continuation has a full stop");
    assert_eq!(
        result["stopped"],
        serde_json::json!([&continuation[..cut], "stop"])
    );
    assert_eq!(result["preload"], serde_json::json!([true, "load", ""]));

    // What the model list, details and version say.
    let tags = &result["tags"][0];
    assert_eq!(tags[0], "smollm2-135m");
    assert!(tags[1].as_u64().unwrap() > 50_000_000, "{tags}");
    assert_eq!(tags[2], "llama");
    assert_eq!(result["ps"], serde_json::json!(["smollm2-135m"]));
    assert_eq!(
        result["show"],
        serde_json::json!(["llama", 8192, 30, ["completion"]])
    );
    assert_eq!(result["version"], env!("CARGO_PKG_VERSION"));

    // What is not supported is refused, by name.
    let refusals = &result["refusals"];
    let refused = |name: &str, status: u64, words: &str| {
        let refusal = &refusals[name];
        assert_eq!(refusal[0], status, "{name}: {refusals}");
        let message = refusal[1].as_str().unwrap();
        assert!(message.contains(words), "{name}: {message}");
    };
    refused("missing", 404, "no-such-model");
    refused("format", 400, "'format'");
    refused("bad_tool", 400, "nonsense");
    refused("role", 400, "robot");
    refused("num_predict", 400, "num_predict");
}
