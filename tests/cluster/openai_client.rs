//! The official OpenAI Python client, pointed at a node, works as with OpenAI's API.

use crate::e2e::{PROMPT, generate_locally};
use crate::harness::{NodeProcess, free_udp_port, run_python_client, wait_for_ring};
use crate::support::default_model;
use crate::support::venv::openai_python;

const CLIENT: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="not-needed", max_retries=0)
messages = [{"role": "user", "content": sys.argv[2]}]
answer = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=32, temperature=0)
pieces = []
usage = None
for chunk in client.chat.completions.create(
    model="smollm2-135m", messages=messages, max_tokens=32, temperature=0,
    stream=True, stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    missing = "accepted"
except openai.NotFoundError as error:
    missing = error.status_code
try:
    client.chat.completions.create(model="smollm2-135m", messages=[])
    empty = "accepted"
except openai.BadRequestError as error:
    empty = error.status_code
# Text completion, whole and streamed (with usage at the end, as OpenAI sends it).
completion = client.completions.create(
    model="smollm2-135m", prompt="The capital of France is", max_tokens=8, temperature=0,
)
completion_pieces = []
completion_usage = None
usage_chunk_choices = None
for chunk in client.completions.create(
    model="smollm2-135m", prompt="The capital of France is", max_tokens=8, temperature=0,
    stream=True, stream_options={"include_usage": True},
):
    assert chunk.object == "text_completion", chunk
    if chunk.usage is not None:
        completion_usage = chunk.usage.total_tokens
        usage_chunk_choices = len(chunk.choices)
    for choice in chunk.choices:
        completion_pieces.append(choice.text)
# Logprobs: chat (content[] with top_logprobs) and completion (parallel lists).
chat_lp = client.chat.completions.create(
    model="smollm2-135m", messages=messages, max_tokens=6, temperature=0,
    logprobs=True, top_logprobs=3,
)
chat_lp_stream = []
for chunk in client.chat.completions.create(
    model="smollm2-135m", messages=messages, max_tokens=6, temperature=0,
    logprobs=True, top_logprobs=3, stream=True,
):
    for choice in chunk.choices:
        if choice.logprobs is not None and choice.logprobs.content:
            chat_lp_stream.extend(
                {"token": c.token, "logprob": c.logprob} for c in choice.logprobs.content
            )
completion_lp = client.completions.create(
    model="smollm2-135m", prompt="The capital of France is", max_tokens=6, temperature=0,
    logprobs=3,
)
refusals = {}
for name, call in [
    ("n", lambda: client.chat.completions.create(model="smollm2-135m", messages=messages, n=2)),
    ("bad_schema", lambda: client.chat.completions.create(
        model="smollm2-135m", messages=messages, response_format={"type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})),
    ("batched_prompt", lambda: client.completions.create(model="smollm2-135m", prompt=["a", "b"])),
    ("too_many_logprobs", lambda: client.completions.create(
        model="smollm2-135m", prompt="a", logprobs=21)),
]:
    try:
        call()
        refusals[name] = "accepted"
    except openai.BadRequestError as error:
        refusals[name] = [error.status_code, error.body.get("param") if isinstance(error.body, dict) else None]
print(json.dumps({
    "text": answer.choices[0].message.content,
    "finish": answer.choices[0].finish_reason,
    "total_tokens": answer.usage.total_tokens,
    "streamed": "".join(pieces),
    "stream_usage": usage,
    "models": [m.id for m in client.models.list()],
    "missing_model": missing,
    "empty_messages": empty,
    "completion": completion.choices[0].text,
    "completion_finish": completion.choices[0].finish_reason,
    "completion_object": completion.object,
    "completion_usage": [completion.usage.prompt_tokens, completion.usage.completion_tokens],
    "completion_streamed": "".join(completion_pieces),
    "completion_stream_usage": completion_usage,
    "usage_chunk_choices": usage_chunk_choices,
    "chat_text": chat_lp.choices[0].message.content,
    "chat_logprobs": [
        {
            "token": c.token,
            "logprob": c.logprob,
            "bytes": c.bytes,
            "top": [[t.token, t.logprob] for t in c.top_logprobs],
        }
        for c in chat_lp.choices[0].logprobs.content
    ],
    "chat_logprobs_streamed": chat_lp_stream,
    "completion_logprobs": {
        "tokens": completion_lp.choices[0].logprobs.tokens,
        "token_logprobs": completion_lp.choices[0].logprobs.token_logprobs,
        "top_logprobs": completion_lp.choices[0].logprobs.top_logprobs,
        "text_offset": completion_lp.choices[0].logprobs.text_offset,
        "text": completion_lp.choices[0].text,
    },
    "refusals": refusals,
}))
"#;

#[test]
fn the_official_openai_python_client_works_against_a_node() {
    let python = openai_python();
    default_model();
    let expected = generate_locally(PROMPT, 32);
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), "openai", free_udp_port());
    wait_for_ring(&node, 1);
    let result = run_python_client(python, CLIENT, &node, PROMPT);
    assert_eq!(result["text"], expected.as_str());
    assert_eq!(result["streamed"], expected.as_str());
    assert_eq!(result["finish"], "stop");
    assert_eq!(result["stream_usage"], result["total_tokens"]);
    assert_eq!(result["models"], serde_json::json!(["smollm2-135m"]));
    assert_eq!(result["missing_model"], 404);
    assert_eq!(result["empty_messages"], 400);

    // Text completion: the model continues the prompt; streamed the same as whole.
    let completion = result["completion"].as_str().unwrap();
    assert!(!completion.is_empty(), "{result}");
    assert_eq!(result["completion_object"], "text_completion");
    assert_eq!(result["completion_streamed"], completion);
    assert_eq!(result["completion_usage"][1], 8, "{result}");
    let completion_total = result["completion_usage"][0].as_u64().unwrap() + 8;
    assert_eq!(result["completion_stream_usage"], completion_total);
    assert_eq!(result["usage_chunk_choices"], 0);
    assert_eq!(result["completion_finish"], "length");

    check_chat_logprobs(&result);
    check_completion_logprobs(&result);

    // What is not supported is refused by name, with 400.
    let refusals = &result["refusals"];
    assert_eq!(refusals["n"], serde_json::json!([400, "n"]), "{refusals}");
    assert_eq!(
        refusals["bad_schema"],
        serde_json::json!([400, "response_format"]),
        "{refusals}"
    );
    assert_eq!(
        refusals["batched_prompt"],
        serde_json::json!([400, "prompt"]),
        "{refusals}"
    );
    assert_eq!(
        refusals["too_many_logprobs"],
        serde_json::json!([400, "logprobs"]),
        "{refusals}"
    );
}

/// Chat logprobs: one entry per generated token, whose bytes make the text, each the most
/// likely of its alternatives (temperature 0), the alternatives in order, and their
/// probabilities a part of the whole; streamed, the same tokens and numbers.
fn check_chat_logprobs(result: &serde_json::Value) {
    let entries = result["chat_logprobs"].as_array().unwrap();
    assert!(!entries.is_empty());
    let mut bytes = Vec::new();
    for entry in entries {
        bytes.extend(
            entry["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
        let logprob = entry["logprob"].as_f64().unwrap();
        let top = entry["top"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{entry}");
        assert_eq!(top[0][0], entry["token"], "{entry}");
        assert!(
            (top[0][1].as_f64().unwrap() - logprob).abs() < 1e-6,
            "{entry}"
        );
        let probs: Vec<f64> = top.iter().map(|t| t[1].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{entry}");
        let mass: f64 = probs.iter().map(|p| p.exp()).sum();
        assert!(mass <= 1.0 + 1e-5 && logprob <= 0.0, "{entry}");
    }
    assert_eq!(
        String::from_utf8_lossy(&bytes).trim_start(),
        result["chat_text"].as_str().unwrap().trim_start()
    );
    // Streamed: the same tokens and numbers.
    let streamed = result["chat_logprobs_streamed"].as_array().unwrap();
    assert_eq!(streamed.len(), entries.len());
    for (s, e) in streamed.iter().zip(entries) {
        assert_eq!(s["token"], e["token"]);
        assert_eq!(s["logprob"], e["logprob"]);
    }
}

/// Completion logprobs: parallel lists, one entry per token, each token the most likely of
/// its alternatives, offsets in order.
fn check_completion_logprobs(result: &serde_json::Value) {
    let lp = &result["completion_logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6, "{lp}");
    for key in ["token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[key].as_array().unwrap().len(), 6, "{key}: {lp}");
    }
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let best = top
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            (best - lp["token_logprobs"][i].as_f64().unwrap()).abs() < 1e-6,
            "{lp}"
        );
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{lp}");
}
