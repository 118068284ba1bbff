#!/usr/bin/env bash
# The benchmarks of docs/BENCHMARKS.md, side by side in one run on this machine:
#   1. decode and prefill tokens/s on the default model (2 threads, 20-token prompt, 128
#      tokens, medians), in alternating rounds:
#      exo (its exact CPU kernels), exo with candle's CPU kernels, candle-transformers'
#      quantized llama (bench/candle-reference), and llama.cpp (llama-cpp-python, when
#      LLAMA_PYTHON names a Python that has it: pip install llama-cpp-python, ~25 min build)
#   2. the memory-bandwidth bound: bytes read per decoded token / measured read bandwidth
#   3. a three-node ring on loopback against one node: decode tokens/s through the API
#   4. the time of one hop of a hidden state (cargo bench --bench hop)
#
#   LLAMA_PYTHON=/path/to/venv/bin/python scripts/bench.sh [ROUNDS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-5}"
export EXO_MODELS_DIR="${EXO_MODELS_DIR:-$root/models/weights}"
model="$(scripts/fetch-model.sh)"
threads=2
export RAYON_NUM_THREADS=$threads CANDLE_NUM_THREADS=$threads
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$work"' EXIT

echo "== building (release)"
cargo build --release --quiet
cargo build --release --quiet --manifest-path bench/candle-reference/Cargo.toml --target-dir target
exo=target/release/exo

ids="$($exo bench --model smollm2-135m --device cpu --prompt-tokens 20 --tokens 2 --runs 1 --json \
    | python3 -c 'import json,sys; print(",".join(map(str, json.load(sys.stdin)["prompt_ids"])))')"

echo "== 1. engines, $rounds alternating rounds (each a median of 3 runs after a warm-up)"
for round in $(seq 1 "$rounds"); do
    $exo bench --model smollm2-135m --device cpu --json | sed 's/^/exo-exact /' >>"$work/results"
    $exo bench --model smollm2-135m --device cpu --cpu-matmul candle --json | sed 's/^/exo-candle-kernels /' >>"$work/results"
    target/release/candle-reference "$model" "$ids" 128 3 | tail -1 | sed 's/^/candle-transformers /' >>"$work/results"
    if [ -n "${LLAMA_PYTHON:-}" ]; then
        "$LLAMA_PYTHON" - "$model" "$ids" 128 3 "$threads" <<'PY' | sed 's/^/llama.cpp /' >>"$work/results"
import json, statistics, sys, time
from llama_cpp import Llama
path, ids, tokens, runs, threads = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512, verbose=False)
def run():
    llm.reset()
    start = time.perf_counter(); first = None; count = 0
    for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        count += 1
        if first is None: first = time.perf_counter()
        if count == tokens: break
    done = time.perf_counter()
    return len(ids) / (first - start), (tokens - 1) / (done - first)
run()
results = [run() for _ in range(runs)]
print(json.dumps({"prefill_tok_s": statistics.median(r[0] for r in results), "decode_tok_s": statistics.median(r[1] for r in results)}))
PY
    fi
    echo "round $round done"
done
python3 - "$work/results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, data = line.split(" ", 1)
    rows.setdefault(name, []).append(json.loads(data))
print(f"{'engine':<22} {'decode tok/s':>12} {'prefill tok/s':>14}   (median over rounds; min..max decode)")
for name, values in rows.items():
    d = [v["decode_tok_s"] for v in values]; p = [v["prefill_tok_s"] for v in values]
    print(f"{name:<22} {statistics.median(d):>12.1f} {statistics.median(p):>14.1f}   ({min(d):.1f}..{max(d):.1f})")
PY

echo "== 2. memory bandwidth bound"
cat >"$work/bandwidth.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
int main(void) {
    size_t n = (size_t)1 << 28; /* 1 GiB of floats */
    float *a = malloc(n * sizeof(float));
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023);
    double best = 0;
    for (int r = 0; r < 7; r++) {
        double t = omp_get_wtime(); float s = 0;
        #pragma omp parallel for reduction(+:s)
        for (size_t i = 0; i < n; i++) s += a[i];
        t = omp_get_wtime() - t;
        double gbs = n * sizeof(float) / t / 1e9;
        if (gbs > best) best = gbs;
        if (s == 42) puts("");
    }
    printf("%.2f\n", best);
    return 0;
}
C
gcc -Ofast -march=native -fopenmp "$work/bandwidth.c" -o "$work/bandwidth"
gbs="$(OMP_NUM_THREADS=$threads "$work/bandwidth")"
python3 - "$model" "$gbs" <<'PY'
import os, sys
size = os.path.getsize(sys.argv[1]); gbs = float(sys.argv[2])
# Per decoded token every weight is read once (the tied Q8_0 embedding as the output head);
# the file is those weights plus ~1.8 MB of header and tokenizer.
weights = size - 1_785_664
print(f"read bandwidth {gbs:.1f} GB/s, {weights/1e6:.1f} MB of weights per token -> bound {gbs*1e9/weights:.0f} tokens/s")
PY

echo "== 3. three-node ring against one node (through the API, greedy, 128 tokens max)"
port=$((40000 + RANDOM % 20000))
start_node() { # name api-port extra-args...
    local name=$1 api=$2; shift 2
    $exo node --device cpu --listen 127.0.0.1 --api-port "$api" --discovery-interfaces lo --discovery-port "$port" \
        --data-dir "$work/$name" "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
}
ask() { # api-port → decode tok/s of a long greedy answer (first request warms the shards)
    python3 - "$1" <<'PY'
import json, sys, urllib.request
body = json.dumps({"model": "smollm2-135m", "max_tokens": 128, "temperature": 0,
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]}).encode()
def ask():
    r = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions", body, {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(r, timeout=600))
ask()
rates = sorted(ask()["exo"]["decode_tokens_per_second"] for _ in range(3))
print(f"{rates[1]:.1f}")
PY
}
wait_ring() { # api-port nodes
    until python3 -c "import json,sys,urllib.request; t=json.load(urllib.request.urlopen('http://127.0.0.1:$1/v1/topology',timeout=2)); sys.exit(len(t['partition'].get('entries',[]))!=$2)" 2>/dev/null; do sleep 0.2; done
}
start_node single 52501 --discovery none
wait_ring 52501 1
single="$(ask 52501)"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()
for i in 1 2 3; do start_node "ring$i" $((52510 + i)); done
wait_ring 52511 3
ring="$(ask 52511)"
python3 -c "print(f'one node: {$single:.1f} tok/s, three-node ring: {$ring:.1f} tok/s ({100*$ring/$single:.0f}% of one node)')"

echo "== 4. one hop"
cargo bench --quiet --bench hop 2>/dev/null | grep -v '^$'
