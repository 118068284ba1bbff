#!/usr/bin/env bash
# Second-turn time to first token (docs/BENCHMARKS.md "Second turn"): one exo node serving
# Qwen2.5-Coder-0.5B-Instruct Q4_K_M, then llama-server on the same file, each answering
# scripts/second-turn-bench.py's conversations (first turn ~1,000 tokens of history, then
# a second turn that repeats it):
#
#   scripts/second-turn-bench.sh [ROUNDS]
#
# LLAMA_BIN names llama.cpp's build/bin (default: target/llama.cpp/build/bin, as
# scripts/build-llama-cpp.sh builds it); without llama-server only exo is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
models="${EXO_MODELS_DIR:-$PWD/models/weights}"
gguf="$models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
llama_bin="${LLAMA_BIN:-target/llama.cpp/build/bin}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

wait_up() { for _ in $(seq 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done; echo "$1 did not come up" >&2; exit 1; }

cargo build --release --quiet
EXO_MODELS_DIR="$models" target/release/exo node --model qwen2.5-coder-0.5b --device cpu \
  --listen 127.0.0.1 --api-port 18541 --discovery-port 18542 --discovery-interfaces lo \
  --data-dir "$work/exo" --node-id bench >"$work/exo.log" 2>&1 &
exo_pid=$!
wait_up http://127.0.0.1:18541/healthz
echo "exo:"
python3 scripts/second-turn-bench.py http://127.0.0.1:18541 qwen2.5-coder-0.5b "$rounds"
kill "$exo_pid"; wait "$exo_pid" 2>/dev/null || true

if [[ -x "$llama_bin/llama-server" ]]; then
  "$llama_bin/llama-server" -m "$gguf" -t 2 -c 4096 --host 127.0.0.1 --port 18543 >"$work/llama.log" 2>&1 &
  wait_up http://127.0.0.1:18543/health
  echo "llama-server:"
  python3 scripts/second-turn-bench.py http://127.0.0.1:18543 qwen2.5-coder-0.5b "$rounds"
fi
