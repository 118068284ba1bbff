#!/usr/bin/env python3
"""Records what llama.cpp answers, as reference data for exo's agreement test.

For each model and each prompt of docs/BENCHMARKS.md §1b, starts llama-server (built by
scripts/build-llama-cpp.sh) on the model file, renders the prompt as llama.cpp does (the
model's chat template for instruct models; BOS + text for base models), and asks for 256
greedy tokens with the log-probabilities of the top tokens at every step (llama.cpp's own
logits, before sampling). Writes tests/data/llama-reference/<model>.json, which
tests/engine/agreement.rs reads: it feeds exo llama.cpp's tokens (teacher forcing) and checks
that every token exo would pick is llama.cpp's top token or a near-tie.

    scripts/record-llama-reference.py [MODEL_ID ...]   (default: the models below)

Needs no package beyond the standard library. Run it again only when the reference changes
(another llama.cpp version, another model); the data is committed.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
]
# model id -> whether the model takes a chat template (instruct) or raw text (base).
MODELS = {"qwen2.5-coder-0.5b": True, "gemma3-270m": False, "smollm2-135m": True}
TOKENS = 256
TOP = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def wait_ready(port, server):
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit("llama-server stopped before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("llama-server was not ready within 120 s")


def record(model_id, instruct, llama_bin):
    path = subprocess.run(
        [os.path.join(ROOT, "scripts/fetch-model.sh"), model_id],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(llama_bin, "llama-server"), "-m", path, "-t", "2", "-c", "4096",
         "--port", str(port), "--host", "127.0.0.1", "-np", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, server)
        version = subprocess.run([os.path.join(llama_bin, "llama-server"), "--version"],
                                 capture_output=True, text=True)
        cases = []
        for prompt in PROMPTS:
            if instruct:
                messages = [{"role": "user", "content": prompt}]
                text = post(port, "/apply-template", {"messages": messages})["prompt"]
            else:
                text = prompt
            ids = post(port, "/tokenize", {"content": text, "add_special": True,
                                            "parse_special": True})["tokens"]
            answer = post(port, "/completion", {
                "prompt": ids, "n_predict": TOKENS, "temperature": 0, "n_probs": TOP,
                "post_sampling_probs": False, "cache_prompt": False, "ignore_eos": True,
                "return_tokens": True,
            })
            steps = []
            for step in answer["completion_probabilities"]:
                top = [[t["id"], round(t["logprob"], 4)] for t in step["top_logprobs"]]
                steps.append({"id": step["id"], "top": top})
            cases.append({"prompt": prompt, "instruct": instruct, "text": text,
                          "prompt_ids": ids, "steps": steps, "answer": answer["content"]})
            print(f"{model_id}: {prompt!r} -> {answer['content'][:60]!r}", file=sys.stderr)
        sha = subprocess.run(["sha256sum", path], capture_output=True, text=True).stdout.split()[0]
        return {
            "model": model_id,
            "file_sha256": sha,
            "llama_cpp": (version.stdout + version.stderr).strip().splitlines()[-1],
            "tokens": TOKENS,
            "top": TOP,
            "cases": cases,
        }
    finally:
        server.terminate()
        server.wait()


def main():
    wanted = sys.argv[1:] or list(MODELS)
    llama_bin = subprocess.run([os.path.join(ROOT, "scripts/build-llama-cpp.sh")], check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
    out_dir = os.path.join(ROOT, "tests/data/llama-reference")
    os.makedirs(out_dir, exist_ok=True)
    for model_id in wanted:
        data = record(model_id, MODELS.get(model_id, True), llama_bin)
        out = os.path.join(out_dir, f"{model_id}.json")
        with open(out, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(out)


if __name__ == "__main__":
    main()
