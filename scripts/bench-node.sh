# Shared set-up of the benchmarks that measure exo nodes serving a real model on this
# machine (scripts/second-turn-bench.sh, scripts/json-schema-bench.sh). Sourced, not run:
#
#   source "$(dirname "$0")/bench-node.sh"
#   bench_prepare qwen2.5-coder-0.5b      # release build, model fetched, CPU and date printed
#   bench_node 18541 18542 bench          # one node: API port, discovery port, node id
#   bench_ring 3 18561 18560 ring         # N nodes on one discovery port, up as one ring
#   bench_stop                            # stops every node started here
#
# Every node serves $bench_model on the CPU, announces on loopback only and keeps its data
# in a temporary directory ($bench_work) removed on exit, with its log beside it. Run the
# benchmarks on a quiet machine: a build beside them halves what they measure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bench_models="${EXO_MODELS_DIR:-$PWD/models/weights}"
bench_work="$(mktemp -d)"
bench_pids=()
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$bench_work"' EXIT

# Waits until `url` answers (60 s at most).
wait_up() {
  for _ in $(seq 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done
  echo "$1 did not come up" >&2
  exit 1
}

# Builds exo (release), fetches MODEL if it is not here yet, and says on what machine
# and when the numbers that follow were taken.
bench_prepare() {
  bench_model="$1"
  cargo build --release --quiet
  EXO_MODELS_DIR="$bench_models" scripts/fetch-model.sh "$bench_model" >/dev/null
  lscpu | grep -m1 "Model name" || true
  echo "CPUs: $(nproc); date: $(date -u +%F)"
}

# Starts one node (API_PORT DISCOVERY_PORT NODE_ID [more exo node arguments]) in the
# background; its log is $bench_work/NODE_ID.log.
bench_start() {
  local api="$1" discovery="$2" id="$3"
  shift 3
  EXO_MODELS_DIR="$bench_models" target/release/exo node --model "$bench_model" --device cpu \
    --listen 127.0.0.1 --api-port "$api" --discovery-port "$discovery" --discovery-interfaces lo \
    --data-dir "$bench_work/$id" --node-id "$id" "$@" >"$bench_work/$id.log" 2>&1 &
  bench_pids+=($!)
}

# One node, up and serving (same arguments as bench_start).
bench_node() {
  bench_start "$@"
  wait_up "http://127.0.0.1:$1/healthz"
}

# N nodes (API ports BASE_API, BASE_API+1, …; ids PREFIX1…PREFIXN) on one discovery
# port, waited on until every node's plan spans all N (each runs its part of the layers).
bench_ring() {
  local n="$1" base="$2" discovery="$3" prefix="$4" i
  for i in $(seq "$n"); do bench_start $((base + i - 1)) "$discovery" "$prefix$i"; done
  for i in $(seq "$n"); do
    local url="http://127.0.0.1:$((base + i - 1))"
    wait_up "$url/healthz"
    for _ in $(seq 600); do
      python3 - "$url" "$n" <<'PY' 2>/dev/null && continue 2
import json, sys, urllib.request
topology = json.load(urllib.request.urlopen(sys.argv[1] + "/v1/topology", timeout=2))
sys.exit(0 if len(topology["partition"].get("entries", [])) == int(sys.argv[2]) else 1)
PY
      sleep 0.2
    done
    echo "$url did not join a ring of $n (logs in $bench_work)" >&2
    tail -5 "$bench_work"/*.log >&2
    exit 1
  done
}

# Stops the nodes started so far and waits for them.
bench_stop() {
  local pid
  for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${bench_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  bench_pids=()
}
