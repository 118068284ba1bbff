#!/usr/bin/env bash
# Structured output on the real model (docs/BENCHMARKS.md "Constrained decoding"): one
# exo node serving Qwen2.5-Coder-0.5B-Instruct Q4_K_M (release build) answering
# scripts/json-schema-bench.py — 50 strict json_schema answers validated, then decode
# speed with and without a schema (greedy, same prompt, medians):
#
#   scripts/json-schema-bench.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
models="${EXO_MODELS_DIR:-$PWD/models/weights}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

wait_up() { for _ in $(seq 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done; echo "$1 did not come up" >&2; exit 1; }

cargo build --release --quiet
EXO_MODELS_DIR="$models" target/release/exo node --model qwen2.5-coder-0.5b --device cpu \
  --listen 127.0.0.1 --api-port 18551 --discovery-port 18552 --discovery-interfaces lo \
  --data-dir "$work/exo" --node-id bench >"$work/exo.log" 2>&1 &
wait_up http://127.0.0.1:18551/healthz
lscpu | grep -m1 "Model name" || true
date -u +%F
python3 scripts/json-schema-bench.py http://127.0.0.1:18551 qwen2.5-coder-0.5b "$rounds"
