//! The official OpenAI Python client, pointed at a node, works as with OpenAI's API.

use std::process::Command;

use crate::e2e::{PROMPT, generate_locally};
use crate::harness::{NodeProcess, free_udp_port, wait_for_ring};
use crate::support::{default_model, openai_python};

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
print(json.dumps({
    "text": answer.choices[0].message.content,
    "finish": answer.choices[0].finish_reason,
    "total_tokens": answer.usage.total_tokens,
    "streamed": "".join(pieces),
    "stream_usage": usage,
    "models": [m.id for m in client.models.list()],
    "missing_model": missing,
    "empty_messages": empty,
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
    let output = Command::new(python)
        .args(["-c", CLIENT, &node.url(), PROMPT])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node.log_text()
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["text"], expected.as_str());
    assert_eq!(result["streamed"], expected.as_str());
    assert_eq!(result["finish"], "stop");
    assert_eq!(result["stream_usage"], result["total_tokens"]);
    assert_eq!(result["models"], serde_json::json!(["smollm2-135m"]));
    assert_eq!(result["missing_model"], 404);
    assert_eq!(result["empty_messages"], 400);
}
