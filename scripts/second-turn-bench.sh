#!/usr/bin/env bash
# Second-turn time to first token (docs/BENCHMARKS.md "Second turn"): Qwen2.5-Coder-0.5B-
# Instruct Q4_K_M served by one exo node, then by a ring of three exo nodes on this
# machine (the request enters at the first node; each runs a third of the layers), then
# by llama-server on the same file, each answering scripts/second-turn-bench.py's
# conversations (first turn ~1,000 tokens of history, then a second turn that repeats it):
#
#   scripts/second-turn-bench.sh [ROUNDS]
#
# LLAMA_BIN names llama.cpp's build/bin (default: target/llama.cpp/build/bin, as
# scripts/build-llama-cpp.sh builds it); without llama-server only exo is measured.
source "$(dirname "$0")/bench-node.sh"
rounds="${1:-5}"
gguf="$bench_models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
llama_bin="${LLAMA_BIN:-target/llama.cpp/build/bin}"
bench_prepare qwen2.5-coder-0.5b

bench_node 18541 18542 bench
echo "exo, one node:"
python3 scripts/second-turn-bench.py http://127.0.0.1:18541 "$bench_model" "$rounds"
bench_stop

bench_ring 3 18561 18560 ring
echo "exo, a ring of three nodes:"
python3 scripts/second-turn-bench.py http://127.0.0.1:18561 "$bench_model" "$rounds"
for i in 1 2 3; do
  echo "ring$i: prefix cache hits $(curl -sf "http://127.0.0.1:$((18560 + i))/metrics" \
    | awk '/^exo_prefix_cache_hits_total/ {s += $NF} END {print s + 0}')"
done
bench_stop

if [[ -x "$llama_bin/llama-server" ]]; then
  "$llama_bin/llama-server" -m "$gguf" -t 2 -c 4096 --host 127.0.0.1 --port 18543 >"$bench_work/llama.log" 2>&1 &
  wait_up http://127.0.0.1:18543/health
  echo "llama-server:"
  python3 scripts/second-turn-bench.py http://127.0.0.1:18543 "$bench_model" "$rounds"
fi
