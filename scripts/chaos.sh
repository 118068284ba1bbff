#!/usr/bin/env bash
# Chaos: three keyed exo nodes in network namespaces joined by a bridge; a bounded loop of
# concurrent streaming chat requests against node 1 while another loop, every few seconds,
# picks node 2 or 3 at random and kills and restarts it (SIGKILL), hangs it for a while
# (SIGSTOP … SIGCONT), cuts its link (veth down … up), or — through the fault switch the
# nodes are started with (--enable-fault-injection, POST /v1/admin/faults) — fails its
# engine for a while (its steps hang, its health check fails), makes it lose the next
# results it sends back (a link cut one way), panics its next batch, or floods its API and
# gRPC ports with idle connections for a while. Node 1 can hold the model alone,
# so every request should finish: the report counts requests, client-visible errors,
# wrong outputs (each answer against the reference greedy answer of `exo generate`),
# re-plans and their times, the longest pause a client saw, and node RSS after the
# warm-up and at the end (node 1's also over time, beside its prefix cache, to tell memory
# that fills up to a bound from a leak). Exits 1 on any error or wrong output.
#
#   scripts/chaos.sh [minutes]      (default 10; needs root for ip netns)
#
# Environment: EXO_BIN (default target/release/exo, built if missing), CONCURRENCY (4),
# FAULT_EVERY (seconds between faults, 6), TOKENS (answer length, 48), FAULTS (the fault
# kinds to draw from, default "kill stop cut engine drop panic flood").
# Everything it makes (namespaces, bridge, veths, processes, a temporary directory) is
# removed on exit; its traffic never leaves those namespaces.
set -euo pipefail

minutes="${1:-10}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exo="${EXO_BIN:-$root/target/release/exo}"
concurrency="${CONCURRENCY:-4}"
fault_every="${FAULT_EVERY:-6}"
tokens="${TOKENS:-48}"
read -r -a kinds <<<"${FAULTS:-kill stop cut engine drop panic flood}"
export EXO_MODELS_DIR="${EXO_MODELS_DIR:-$root/models/weights}"
[ "$(id -u)" -eq 0 ] || { echo "chaos: needs root (ip netns)" >&2; exit 2; }
if [ ! -x "$exo" ]; then
    echo "chaos: building $exo" >&2
    (cd "$root" && cargo build --release)
fi
"$root/scripts/fetch-model.sh" >/dev/null

tag="c$$"
switch="exo-$tag-sw"
work="$(mktemp -d)"
pids=(0 0 0 0)
namespaces=("$switch")

cleanup() {
    for i in 1 2 3; do
        [ "${pids[$i]}" -gt 0 ] && { kill -CONT "${pids[$i]}" 2>/dev/null || true; kill -9 "${pids[$i]}" 2>/dev/null || true; }
    done
    wait 2>/dev/null || true
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$exo" keygen --out "$work/cluster.key" 2>/dev/null
ip netns add "$switch"
ip -n "$switch" link add "br$tag" type bridge
ip -n "$switch" link set "br$tag" up

start_node() {
    local i=$1
    XDG_DATA_HOME="$work/data$i" RUST_LOG=info ip netns exec "exo-$tag-$i" "$exo" node \
        --device cpu --cluster-key "$work/cluster.key" --node-id "chaos$i" \
        --enable-fault-injection >>"$work/node$i.log" 2>&1 &
    pids[$i]=$!
}

for i in 1 2 3; do
    ns="exo-$tag-$i"
    namespaces+=("$ns")
    ip netns add "$ns"
    ip link add "veth$tag$i" netns "$ns" type veth peer name "port$tag$i" netns "$switch"
    ip -n "$switch" link set "port$tag$i" master "br$tag" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.78.0.$i/24" dev "veth$tag$i"
    ip -n "$ns" link set "veth$tag$i" up
    start_node "$i"
done

# Nodes node 1 sees Ready (itself included).
ring_size() {
    ip netns exec "exo-$tag-1" python3 - <<'PY' 2>/dev/null || echo 0
import json, urllib.request
t = json.load(urllib.request.urlopen("http://127.0.0.1:52415/v1/topology", timeout=2))
print(sum(1 for n in t["nodes"] if n["link_state"] in ("self", "ready")))
PY
}
wait_for_ring() {
    local deadline=$((SECONDS + ${2:-90}))
    until [ "$(ring_size)" -ge "$1" ]; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}
# Sets fault switches on node $1 (JSON $2) through its admin endpoint, on its loopback.
inject() {
    ip netns exec "exo-$tag-$1" python3 - "$2" <<'PY' >/dev/null || echo "chaos: could not set $2 on node $1"
import sys, urllib.request
request = urllib.request.Request("http://127.0.0.1:52415/v1/admin/faults", sys.argv[1].encode(),
                                 {"content-type": "application/json"})
urllib.request.urlopen(request, timeout=5).read()
PY
}
# Holds $2 idle connections on node $1's API port and on its gRPC port for $3 seconds.
flood() {
    ip netns exec "exo-$tag-1" python3 - "10.78.0.$1" "$2" "$3" <<'PY' || true
import json, socket, sys, time, urllib.request
host, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
topology = json.load(urllib.request.urlopen("http://127.0.0.1:52415/v1/topology", timeout=2))
grpc = [n["address"] for n in topology["nodes"] if n["address"].startswith(host + ":")]
ports = [52415] + [int(a.rsplit(":", 1)[1]) for a in grpc[:1]]
held = []
for port in ports:
    for _ in range(count):
        try:
            held.append(socket.create_connection((host, port), timeout=1))
        except OSError:
            break
time.sleep(seconds)
for s in held: s.close()
PY
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Bytes node 1's prefix cache holds (it fills up to its budget by design, so the RSS
# report separates it from growth that has no bound).
prefix_cache_kb() {
    ip netns exec "exo-$tag-1" python3 - <<'PY' 2>/dev/null || echo 0
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:52415/metrics", timeout=2).read().decode()
print(sum(int(float(l.split()[-1])) for l in text.splitlines()
          if l.startswith("exo_prefix_cache_bytes")) // 1024)
PY
}
# One line per fault round: seconds since the start, node 1's RSS and prefix cache (KiB).
sample_node1() { echo "$SECONDS $(rss_kb "${pids[1]}") $(prefix_cache_kb)" >>"$work/rss.tsv"; }

wait_for_ring 3 || { echo "chaos: the three nodes did not find each other" >&2; tail -20 "$work"/node*.log >&2; exit 1; }
echo "chaos: three nodes up; computing reference answers"

# The reference: each prompt's greedy answer from one process.
prompts=(
    "Write a short story about a dragon who learns to bake bread."
    "What is the capital of France?"
    "List five fruits and say one thing about each."
    "Explain what a network switch does."
)
: >"$work/reference.jsonl"
for p in "${prompts[@]}"; do
    answer="$("$exo" generate --model smollm2-135m --device cpu --temperature 0 \
        --max-tokens "$tokens" --prompt "$p" 2>/dev/null)"
    python3 -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1], "answer": sys.argv[2]}))' \
        "$p" "$answer" >>"$work/reference.jsonl"
done

cat >"$work/load.py" <<'PY'
# Streams chat requests at node 1 from `concurrency` threads until the deadline; one JSON
# line per request: ok, error, wrong, replans, re-plan seconds, longest pause between pieces.
import json, sys, threading, time, urllib.request, random
reference_file, out_file, concurrency, tokens, seconds = sys.argv[1:6]
reference = [json.loads(l) for l in open(reference_file)]
end = time.time() + float(seconds)
lock = threading.Lock()
out = open(out_file, "w")

def one(item):
    body = json.dumps({"model": "smollm2-135m", "stream": True, "temperature": 0,
                       "max_tokens": int(tokens),
                       "messages": [{"role": "user", "content": item["prompt"]}]}).encode()
    request = urllib.request.Request("http://127.0.0.1:52415/v1/chat/completions", body,
                                     {"content-type": "application/json"})
    text, error, replans, last, pause = "", None, [], time.time(), 0.0
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"].get("message", str(chunk))
                    break
                piece = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                if piece:
                    now = time.time()
                    pause = max(pause, now - last)
                    last = now
                    text += piece
                if (chunk.get("choices") or [{}])[0].get("finish_reason"):
                    replans = chunk.get("exo", {}).get("replans", [])
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    return {"ok": error is None and text == item["answer"], "error": error,
            "wrong": error is None and text != item["answer"],
            "replans": len(replans), "replan_seconds": [r["seconds"] for r in replans],
            "lost": [n for r in replans for n in r["lost"]], "longest_pause": pause}

def worker(seed):
    rng = random.Random(seed)
    while time.time() < end:
        result = one(rng.choice(reference))
        with lock:
            out.write(json.dumps(result) + "\n")
            out.flush()

threads = [threading.Thread(target=worker, args=(i,)) for i in range(int(concurrency))]
for t in threads: t.start()
for t in threads: t.join()
PY

run_seconds=$((minutes * 60))
warmup=$(( run_seconds / 5 < 60 ? run_seconds / 5 : 60 ))
echo "chaos: ${minutes} min, ${concurrency} concurrent streams of ${tokens} tokens, a fault every ${fault_every}s"
ip netns exec "exo-$tag-1" python3 "$work/load.py" "$work/reference.jsonl" "$work/results.jsonl" \
    "$concurrency" "$tokens" "$run_seconds" &
load=$!

declare -A faults=([kill]=0 [stop]=0 [cut]=0 [engine]=0 [drop]=0 [panic]=0 [flood]=0)
end=$((SECONDS + run_seconds))
rss_start=()
warm_at=$((SECONDS + warmup))
while [ $SECONDS -lt $end ]; do
    sleep "$fault_every"
    if [ ${#rss_start[@]} -eq 0 ] && [ $SECONDS -ge $warm_at ]; then
        rss_start=("$(rss_kb "${pids[1]}")" "$(rss_kb "${pids[2]}")" "$(rss_kb "${pids[3]}")")
    fi
    [ ${#rss_start[@]} -eq 0 ] || sample_node1
    [ $SECONDS -lt $((end - 10)) ] || break
    victim=$((2 + RANDOM % 2))
    action=$(printf '%s\n' "${kinds[@]}" | shuf -n 1)
    faults[$action]=$((faults[$action] + 1))
    echo "chaos: $(date +%T) $action node $victim"
    case "$action" in
        kill)
            kill -9 "${pids[$victim]}"; wait "${pids[$victim]}" 2>/dev/null || true
            sleep 2; start_node "$victim" ;;
        stop)
            kill -STOP "${pids[$victim]}"; sleep 3; kill -CONT "${pids[$victim]}" ;;
        cut)
            ip -n "exo-$tag-$victim" link set "veth$tag$victim" down; sleep 3
            ip -n "exo-$tag-$victim" link set "veth$tag$victim" up ;;
        engine)
            inject "$victim" '{"fail_engine": true}'; sleep 3
            inject "$victim" '{"fail_engine": false}' ;;
        drop)
            inject "$victim" '{"drop_results": 3}' ;;
        panic)
            inject "$victim" '{"panic_batch": true}' ;;
        flood)
            flood "$victim" 500 3 ;;
    esac
    # The next fault only once the node is back (one node down at a time).
    wait_for_ring 3 60 || echo "chaos: node $victim did not come back within 60 s"
done
wait "$load" || true
rss_end=("$(rss_kb "${pids[1]}")" "$(rss_kb "${pids[2]}")" "$(rss_kb "${pids[3]}")")
[ ${#rss_start[@]} -gt 0 ] || rss_start=("${rss_end[@]}")
sample_node1

python3 - "$work/results.jsonl" "$work/rss.tsv" "${faults[kill]}" "${faults[stop]}" "${faults[cut]}" \
    "${faults[engine]}" "${faults[drop]}" "${faults[panic]}" "${faults[flood]}" \
    "${rss_start[@]}" "${rss_end[@]}" <<'PY'
import json, statistics, sys
results = [json.loads(l) for l in open(sys.argv[1])]
samples = [[int(x) for x in l.split()] for l in open(sys.argv[2]) if l.strip()]
kills, stops, cuts, engines, drops, panics, floods = sys.argv[3:10]
rss_start = [int(x) for x in sys.argv[10:13]]
rss_end = [int(x) for x in sys.argv[13:16]]
errors = [r for r in results if r["error"]]
wrong = [r for r in results if r["wrong"]]
replanned = [r for r in results if r["replans"]]
seconds = [s for r in results for s in r["replan_seconds"]]
pauses = [r["longest_pause"] for r in replanned]
med = lambda xs: f"{statistics.median(xs):.2f}" if xs else "-"
print(f"requests: {len(results)}   client-visible errors: {len(errors)}   wrong outputs: {len(wrong)}")
print(f"faults: kill {kills}, stop {stops}, cut {cuts}, engine {engines}, drop {drops}, "
      f"panic {panics}, flood {floods}")
print(f"re-plans: {sum(r['replans'] for r in results)} in {len(replanned)} requests; "
      f"noticed → first token: median {med(seconds)} s, max {max(seconds, default=0):.2f} s")
print(f"longest client pause in re-planned requests: median {med(pauses)} s, max {max(pauses, default=0):.2f} s")
growth = (rss_end[0] - rss_start[0]) / max(rss_start[0], 1) * 100
print(f"node 1 (never faulted) RSS after warm-up {rss_start[0]/1024:.1f} MiB, at the end {rss_end[0]/1024:.1f} MiB ({growth:+.1f}%)")
if len(samples) >= 3:
    # Growth in the first and the second half of the run after the warm-up: a leak keeps
    # its pace, memory that fills up to a bound (caches, pools, the allocator's arenas)
    # slows down. The prefix cache's own growth is shown apart: it is bounded by its budget.
    first, middle, last = samples[0], samples[len(samples) // 2], samples[-1]
    mib = lambda kb: kb / 1024
    print(f"node 1 RSS over time (MiB): {mib(first[1]):.1f} at {first[0]} s, "
          f"{mib(middle[1]):.1f} at {middle[0]} s, {mib(last[1]):.1f} at {last[0]} s; "
          f"first half {mib(middle[1] - first[1]):+.1f}, second half {mib(last[1] - middle[1]):+.1f}")
    print(f"node 1 prefix cache (MiB): {mib(first[2]):.1f} → {mib(middle[2]):.1f} → {mib(last[2]):.1f}; "
          f"RSS growth beside it {mib((last[1] - first[1]) - (last[2] - first[2])):+.1f}")
print(f"nodes 2, 3 RSS at the end (restarted ones start afresh): {rss_end[1]/1024:.1f}, {rss_end[2]/1024:.1f} MiB")
for r in errors[:5]:
    print("  error:", r["error"])
sys.exit(1 if errors or wrong else 0)
PY
