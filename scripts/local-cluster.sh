#!/usr/bin/env bash
# The main job, in one command: a three-node exo cluster on this machine answers a prompt.
#
#   scripts/local-cluster.sh ["your prompt"]
#
# Fetches the default model if needed, builds exo (release), starts three nodes with UDP
# discovery, waits until each sees the other two, sends the prompt through one node's
# OpenAI-compatible API, prints the answer, which node ran which layers, tokens/s and
# every node's resource states, then stops the nodes cleanly (also on failure or Ctrl-C).
#
# Discovery announces on loopback only (EXO_DISCOVERY_INTERFACES=lo) so that a cluster on
# one machine stays on it; set EXO_DISCOVERY_INTERFACES= to announce everywhere.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prompt="${1:-What is the capital of Germany?}"
cd "$root"
export EXO_MODELS_DIR="${EXO_MODELS_DIR:-$root/models/weights}"
export EXO_DISCOVERY_INTERFACES="${EXO_DISCOVERY_INTERFACES-lo}"

echo "== fetching the default model (once)"
scripts/fetch-model.sh
echo "== building exo (release; the first build takes a while)"
cargo build --release --quiet
exo="$root/target/release/exo"

work="$(mktemp -d)"
pids=()
stop_nodes() {
    local status=0
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    pids=()
    return $status
}
cleanup() {
    stop_nodes || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

# A free TCP port, preferring the given one.
free_port() {
    python3 - "$1" <<'PY'
import socket, sys
for port in [int(sys.argv[1]), 0]:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            print(s.getsockname()[1]); break
        except OSError:
            continue
PY
}

# One cluster key for the three: discovery is authenticated and the nodes talk over
# mutual TLS (docs/SECURITY.md).
"$exo" keygen --out "$work/cluster.key" 2>/dev/null

ports=()
echo "== starting three nodes (cluster key $work/cluster.key)"
for i in 1 2 3; do
    port="$(free_port $((52414 + i)))"
    ports+=("$port")
    "$exo" node --listen 127.0.0.1 --api-port "$port" --data-dir "$work/node$i" \
        --cluster-key "$work/cluster.key" \
        >"$work/node$i.log" 2>&1 &
    pids+=($!)
    echo "node $i: API http://127.0.0.1:$port (log $work/node$i.log)"
done

show_logs() { for i in 1 2 3; do echo "--- node $i"; tail -15 "$work/node$i.log"; done; }

echo "== waiting until each node sees the other two"
deadline=$((SECONDS + 120))
for port in "${ports[@]}"; do
    until python3 - "$port" <<'PY' 2>/dev/null
import json, sys, urllib.request
topology = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/topology", timeout=2))
sys.exit(0 if len(topology["partition"].get("entries", [])) == 3 else 1)
PY
    do
        if [ $SECONDS -ge $deadline ]; then echo "the nodes did not find each other"; show_logs; exit 1; fi
        sleep 0.2
    done
done
echo "all three nodes see each other"

echo "== asking node 1: $prompt"
python3 - "${ports[0]}" "$prompt" <<'PY'
import json, sys, urllib.request
port, prompt = sys.argv[1], sys.argv[2]
body = json.dumps({
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": prompt}],
    "max_tokens": 128,
    "temperature": 0,
}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body, {"content-type": "application/json"})
try:
    answer = json.load(urllib.request.urlopen(request, timeout=300))
except urllib.error.HTTPError as error:
    sys.exit(f"the node answered {error.code}: {error.read().decode()}")
exo = answer["exo"]
print()
print(answer["choices"][0]["message"]["content"])
print()
print("layers:")
for entry in exo["partition"]:
    print(f"  {entry['node_id']} ({entry['address']}) ran layers [{entry['start_layer']}, {entry['end_layer']})")
usage = answer["usage"]
print(f"tokens: {usage['prompt_tokens']} prompt, {usage['completion_tokens']} generated; "
      f"prefill {exo['prefill_seconds']:.2f} s, decode {exo['decode_tokens_per_second']:.1f} tokens/s")
PY

echo
echo "== resource states"
for i in 1 2 3; do
    echo "-- node $i"
    "$exo" resources list --node "http://127.0.0.1:${ports[$((i - 1))]}"
done

echo
echo "== stopping the nodes"
if stop_nodes; then
    echo "all nodes stopped cleanly"
else
    echo "a node did not stop cleanly"; show_logs; exit 1
fi
