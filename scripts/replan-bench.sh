#!/usr/bin/env bash
# How long a client waits when a node of its request's ring dies or hangs: three nodes on
# loopback (n1 → n2 → n3, ranked by --memory-limit), a 128-token greedy answer streamed from
# n1, and at the 40th piece n2 is SIGKILLed (or SIGSTOPped). Per round it prints the
# client's pause (last piece before the fault → first piece after), the re-plan's own time
# as the final chunk reports it (loss noticed → first token of the new epoch: planning,
# layer loads, re-prefill of prompt + generated tokens), and the difference (how long the
# loss took to notice); then the medians. The answer is checked against `exo generate`.
#
#   scripts/replan-bench.sh [rounds] [kill|stop]     (default 5 kill; EXO_BIN overrides
#                                                     target/release/exo, built if missing)
set -euo pipefail

rounds="${1:-5}"
fault="${2:-kill}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exo="${EXO_BIN:-$root/target/release/exo}"
export EXO_MODELS_DIR="${EXO_MODELS_DIR:-$root/models/weights}"
[ -x "$exo" ] || (cd "$root" && cargo build --release)
"$root/scripts/fetch-model.sh" >/dev/null
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

prompt="Write a very long story about a dragon who learns to bake bread."
expected="$("$exo" generate --model smollm2-135m --device cpu --temperature 0 --max-tokens 128 --prompt "$prompt" 2>/dev/null)"
printf '%s' "$expected" >"$work/expected.txt"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); fault: $fault"

for round in $(seq 1 "$rounds"); do
    port=$((40000 + RANDOM % 20000))
    pids=()
    api=()
    for i in 1 2 3; do
        limit=$(( (4 - i) * 1000 ))MB
        a=$((20000 + RANDOM % 20000))
        api+=("$a")
        RUST_LOG=info EXO_MEMORY_LIMIT="$limit" "$exo" node --model smollm2-135m --device cpu \
            --listen 127.0.0.1 --api-port "$a" --discovery-port "$port" --discovery-interfaces lo \
            --data-dir "$work/r$round-n$i" --node-id "n$i" >"$work/r$round-n$i.log" 2>&1 &
        pids+=($!)
    done
    python3 - "${api[0]}" "${pids[1]}" "$fault" "$prompt" "$work/expected.txt" <<'PY' | tee -a "$work/rounds.txt"
import json, os, signal, sys, time, urllib.request
api, victim, fault, prompt, expected_file = sys.argv[1:6]
base = f"http://127.0.0.1:{api}"
deadline = time.time() + 120
while True:
    try:
        t = json.load(urllib.request.urlopen(base + "/v1/topology", timeout=2))
        if [e["node_id"] for e in t["partition"].get("entries", [])] == ["n1", "n2", "n3"]:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("the ring n1 → n2 → n3 did not form")
    time.sleep(0.1)
body = json.dumps({"model": "smollm2-135m", "stream": True, "temperature": 0, "max_tokens": 128,
                   "messages": [{"role": "user", "content": prompt}]}).encode()
request = urllib.request.Request(base + "/v1/chat/completions", body, {"content-type": "application/json"})
text, pieces, faulted, pause, replans = "", 0, None, None, []
with urllib.request.urlopen(request, timeout=300) as response:
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            sys.exit(f"client error: {chunk}")
        piece = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
        if piece:
            now = time.time()
            if faulted and pause is None:
                pause = now - faulted
            text += piece
            pieces += 1
            if pieces == 40:
                os.kill(int(victim), signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
                faulted = time.time()
        if (chunk.get("choices") or [{}])[0].get("finish_reason"):
            replans = chunk.get("exo", {}).get("replans", [])
same = text == open(expected_file).read()
replan = replans[0]["seconds"] if replans else float("nan")
print(f"pause {pause:.3f} s  re-plan {replan:.3f} s  noticed after {pause - replan:.3f} s  "
      f"re-plans {len(replans)}  answer {'unchanged' if same else 'CHANGED'}")
PY
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
done
python3 - "$work/rounds.txt" <<'PY'
import re, statistics, sys
rows = [list(map(float, re.findall(r"([0-9.]+) s", l))) for l in open(sys.argv[1]) if l.startswith("pause")]
if rows:
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"median of {len(rows)}: pause {med[0]:.3f} s, re-plan {med[1]:.3f} s, noticed after {med[2]:.3f} s")
PY
