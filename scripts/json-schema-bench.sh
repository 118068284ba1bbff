#!/usr/bin/env bash
# Structured output on the real model (docs/BENCHMARKS.md "Constrained decoding"): one
# exo node serving Qwen2.5-Coder-0.5B-Instruct Q4_K_M (release build) answering
# scripts/json-schema-bench.py — 50 strict json_schema answers validated, then decode
# speed with and without a schema (greedy, same prompt, medians):
#
#   scripts/json-schema-bench.sh [ROUNDS]
source "$(dirname "$0")/bench-node.sh"
rounds="${1:-5}"
bench_prepare qwen2.5-coder-0.5b
bench_node 18551 18552 bench
python3 scripts/json-schema-bench.py http://127.0.0.1:18551 "$bench_model" "$rounds"
