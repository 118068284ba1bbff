#!/usr/bin/env python3
"""Structured output against a running node (docs/BENCHMARKS.md "Constrained decoding"):

1. 50 answers under a strict json_schema at temperature 0.9 (seeds 0..49, varied
   subjects): how many parse as JSON and validate against the schema (the issue's goal:
   all 50).
2. The cost of the grammar on decode speed: the same prompt, greedy, 128 tokens, with and
   without a schema (one string property, so the answer runs as long as the plain one),
   ROUNDS runs of each interleaved; the median decode tok/s the node reports
   (`exo.decode_tokens_per_second`).

    scripts/json-schema-bench.py URL MODEL [ROUNDS]

Only the standard library: the validation is written out for the schema used here.
"""
import json
import statistics
import sys
import urllib.request

url, model = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
SUBJECTS = ["a user of a web site", "a pilot", "a child", "a chess player", "a baker",
            "a robot", "a teacher", "a nurse", "a farmer", "a poet"]


def valid(value):
    """Whether `value` validates against SCHEMA."""
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age", "role"}
        and isinstance(value["name"], str)
        and isinstance(value["age"], int) and not isinstance(value["age"], bool)
        and value["role"] in ("admin", "user", "guest")
    )


def chat(body):
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


passed, failures = 0, []
for i in range(50):
    subject = SUBJECTS[i % len(SUBJECTS)]
    answer = chat({
        "model": model, "temperature": 0.9, "seed": i, "max_tokens": 80,
        "messages": [{"role": "user", "content": f"Describe {subject} (number {i})."}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}},
    })
    text = answer["choices"][0]["message"]["content"]
    try:
        ok = valid(json.loads(text))
    except ValueError:
        ok = False
    passed += ok
    if not ok:
        failures.append(text)
print(f"json_schema strict: {passed}/50 answers parse and validate")
for text in failures:
    print("  failed:", text)

prompt = [{"role": "user", "content": "Tell a long story about a robot who learns to paint."}]
story = {"type": "json_schema", "json_schema": {"name": "story", "strict": True, "schema": {
    "type": "object", "properties": {"story": {"type": "string"}},
    "required": ["story"], "additionalProperties": False}}}
speeds = {"plain": [], "schema": []}
tokens = {"plain": [], "schema": []}
for _ in range(rounds):
    for kind in ("plain", "schema"):
        body = {"model": model, "temperature": 0, "max_tokens": 128, "messages": prompt}
        if kind == "schema":
            body["response_format"] = story
        answer = chat(body)
        speeds[kind].append(answer["exo"]["decode_tokens_per_second"])
        tokens[kind].append(answer["usage"]["completion_tokens"])
plain, schema = statistics.median(speeds["plain"]), statistics.median(speeds["schema"])
print(f"decode, greedy, {rounds} runs each: plain {plain:.1f} tok/s "
      f"({statistics.median(tokens['plain'])} tokens), json_schema {schema:.1f} tok/s "
      f"({statistics.median(tokens['schema'])} tokens): the grammar costs "
      f"{100 * (1 - schema / plain):.1f}%")
