#!/usr/bin/env bash
# Every CUDA check of docs/GPU.md in one run, printing every figure. Runs on a machine with
# an NVIDIA GPU, from the repository root, with a CUDA build of exo:
#
#   bash scripts/gpu-checks.sh MODEL.gguf [EXO]
#
# EXO is the command that runs the CUDA build (default: target-cuda/release/exo; on the lent
# GPU machines, "bash .gpu/run.sh" as packed by ../shared/cuda/pack.sh).
# 1. generate on CUDA: the France answer, and its first 16 greedy token ids against the CPU's
# 2. bench on CUDA and on the CPU (each after a warm-up; the first CUDA launch compiles PTX)
# 3. a two-node ring on the one GPU, and a mixed ring of a CPU node and a CUDA node, over
#    loopback: the same greedy answer as one process
set -uo pipefail
model="${1:?usage: gpu-checks.sh MODEL.gguf [EXO]}"
exo_cmd="${2:-target-cuda/release/exo}"
exo() { $exo_cmd "$@"; }
work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
prompt="What is the capital of France?"
failures=0
check() { if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; failures=$((failures + 1)); fi; }

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
date -u +"date: %Y-%m-%dT%H:%M:%SZ"

echo "== 1. generate (greedy, 32 tokens) on CUDA and on the CPU"
exo generate --model "$model" --device cuda --prompt "$prompt" --max-tokens 32 --temperature 0 --token-ids \
    >"$work/cuda.txt" 2>"$work/cuda.err"
exo generate --model "$model" --device cpu --prompt "$prompt" --max-tokens 32 --temperature 0 --token-ids \
    >"$work/cpu.txt" 2>"$work/cpu.err"
echo "cuda: $(cat "$work/cuda.txt")"; grep -v '^token ids' "$work/cuda.err" | tail -3
echo "cpu:  $(cat "$work/cpu.txt")"; grep -v '^token ids' "$work/cpu.err" | tail -3
cuda_ids="$(grep '^token ids' "$work/cuda.err" | cut -d' ' -f3 | cut -d, -f1-16)"
cpu_ids="$(grep '^token ids' "$work/cpu.err" | cut -d' ' -f3 | cut -d, -f1-16)"
echo "first 16 ids, cuda: $cuda_ids"
echo "first 16 ids, cpu:  $cpu_ids"
check "the CUDA answer says Paris" 'grep -q Paris "$work/cuda.txt"'
check "the first 16 greedy tokens match the CPU run" '[ -n "$cuda_ids" ] && [ "$cuda_ids" = "$cpu_ids" ]'

echo "== 2. bench (20-token prompt, 128 tokens, median of 5 runs after a warm-up)"
exo bench --model "$model" --device cuda --prompt-tokens 20 --tokens 128 --runs 5 --json | tee "$work/bench-cuda.json"
exo bench --model "$model" --device cpu --prompt-tokens 20 --tokens 128 --runs 3 --json | tee "$work/bench-cpu.json"
exo bench --model "$model" --device cuda --prompt-tokens 512 --tokens 128 --runs 3 --json

echo "== 3. rings over loopback"
ring() { # name device-of-node-1 device-of-node-2
    local port=$((40000 + RANDOM % 20000)) api1=$((20000 + RANDOM % 10000)) api2
    api2=$((api1 + 1))
    exo node --model "$model" --device "$2" --listen 127.0.0.1 --api-port "$api1" --discovery-port "$port" \
        --discovery-interfaces lo --data-dir "$work/$1-a" >"$work/$1-a.log" 2>&1 & pids+=($!)
    exo node --model "$model" --device "$3" --listen 127.0.0.1 --api-port "$api2" --discovery-port "$port" \
        --discovery-interfaces lo --data-dir "$work/$1-b" >"$work/$1-b.log" 2>&1 & pids+=($!)
    for _ in $(seq 1 600); do
        exo chat --node "http://127.0.0.1:$api1" --prompt "$prompt" --max-tokens 32 --json >"$work/$1.json" 2>/dev/null \
            && grep -q '"end_layer"' "$work/$1.json" && [ "$(grep -c '"node_id"' "$work/$1.json")" -ge 2 ] && break
        sleep 0.2
    done
    exo chat --node "http://127.0.0.1:$api1" --prompt "$prompt" --max-tokens 32 >"$work/$1.txt" 2>"$work/$1.err"
    echo "$1: $(cat "$work/$1.txt") [$(cat "$work/$1.err")]"
    check "$1 gives the single-process CUDA answer" 'cmp -s "$work/$1.txt" "$work/cuda.txt"'
    kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; pids=()
}
ring two-cuda-nodes cuda cuda
ring cpu-and-cuda cpu cuda

echo "== done: $failures failure(s)"
exit $failures
