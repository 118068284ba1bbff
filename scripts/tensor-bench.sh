#!/usr/bin/env bash
# One user's answer through a tensor-parallel pair against one node (issue 22's goal:
# decode and prefill >= 1.6x): the real Qwen2.5-Coder-0.5B Q4_K_M, every node pinned to
# one core with taskset —
#   single: one `exo node` on core 0 (--discovery none, a pipeline of one);
#   pair:   two `exo node --parallelism tensor` on cores 0 and 1, the request sent to the
#           leader (it plans one group over every layer: ta+tb[0,24)).
# All three run at once (an idle node costs nothing) and the requests alternate between
# single and pair, round by round, so both see the same machine. Per round and setup:
#   decode  — a 128-token greedy answer to a short prompt: the node's own
#             exo.decode_tokens_per_second (tokens after the first / their time);
#   prefill — a ~400-token prompt answered with one token: usage.prompt_tokens divided by
#             exo.prefill_seconds (request start to first token).
# Every prompt starts with the round's number, so no node reuses a cached prefix. Medians
# are printed with the speed-up; the pair's decoded text is checked against the single's.
#
#   scripts/tensor-bench.sh [rounds]     (default 5; EXO_BIN
#       overrides target/release/exo; CORES="0 1" picks the two cores)
set -euo pipefail

rounds="${1:-5}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exo="${EXO_BIN:-$root/target/release/exo}"
read -r core_a core_b <<<"${CORES:-0 1}"
export EXO_MODELS_DIR="${EXO_MODELS_DIR:-$root/models/weights}"
[ -x "$exo" ] || (cd "$root" && cargo build --release)
"$root/scripts/fetch-model.sh" qwen2.5-coder-0.5b >/dev/null
model=qwen2.5-coder-0.5b
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u '+%F %H:%M UTC'); cores $core_a,$core_b"
echo "exo: $exo ($(cd "$root" && git rev-parse --short HEAD))"

start_node() { # core name api-port discovery-args... → pid in pids
    local core=$1 name=$2 api=$3
    shift 3
    RUST_LOG=info taskset -c "$core" "$exo" node --model "$model" --device cpu \
        --listen 127.0.0.1 --api-port "$api" --data-dir "$work/$name" --node-id "$name" \
        --memory-limit 4GB "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
}
port=$((40000 + RANDOM % 20000))
single=$((20000 + RANDOM % 10000))
leader=$((single + 1))
follower=$((single + 2))
start_node "$core_a" single "$single" --discovery none
start_node "$core_a" ta "$leader" --discovery-port "$port" --discovery-interfaces lo --parallelism tensor
start_node "$core_b" tb "$follower" --discovery-port "$port" --discovery-interfaces lo --parallelism tensor

python3 - "$rounds" "$single" "$leader" "$follower" "$model" <<'PY'
import json, statistics, sys, time, urllib.request

rounds, single, leader, follower, model = int(sys.argv[1]), *sys.argv[2:6]
setups = {"single": single, "pair": leader}

def get(api, path):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{api}{path}", timeout=5))

def wait_plan(api, want):
    deadline = time.time() + 180
    while True:
        try:
            entries = get(api, "/v1/topology")["partition"].get("entries", [])
            if want(entries):
                return entries
        except Exception:
            pass
        if time.time() > deadline:
            sys.exit(f"node on :{api} did not plan as expected")
        time.sleep(0.2)

wait_plan(single, lambda e: len(e) == 1)
group = wait_plan(leader, lambda e: len(e) == 1 and len(e[0].get("followers", [])) == 1)
print(f"pair plan: {group[0]['node_id']}+{group[0]['followers'][0]['node_id']}"
      f"[{group[0]['start_layer']},{group[0]['end_layer']})")

def ask(api, prompt, max_tokens):
    body = json.dumps({"model": model, "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{api}/v1/chat/completions", body,
                                     {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(request, timeout=600))

# ~400 tokens of plain prose (a paragraph repeated with numbered lines).
passage = " ".join(
    f"Line {i}: the harbour master counted the boats that came in before the storm, "
    "wrote their names in the ledger and checked the ropes on the quay." for i in range(14))
decode_prompt = "Write a Python function that parses a CSV file and explain it."

for api in setups.values():  # warm up: weights paged in, group links open
    ask(api, "Round 0. " + decode_prompt, 16)

def group_stats(api):
    """The engine's group counters (collective_seconds: time in all-reduces, waiting for
    the other member included), found in /v1/resources."""
    def find(value):
        if isinstance(value, dict):
            if "collective_seconds" in value:
                return value
            value = list(value.values())
        if isinstance(value, list):
            for item in value:
                found = find(item)
                if found:
                    return found
        return None
    return find(get(api, "/v1/resources")) or {}

results = {name: {"decode": [], "prefill": []} for name in setups}
# Where a pair's decode time goes: seconds in collectives per member, all-reduces, tokens.
profile = {"leader": 0.0, "follower": 0.0, "all_reduces": 0, "tokens": 0, "seconds": 0.0}
texts = {}
for r in range(1, rounds + 1):
    order = list(setups.items()) if r % 2 else list(reversed(setups.items()))
    for name, api in order:
        before = name == "pair" and (group_stats(leader), group_stats(follower))
        answer = ask(api, f"Round {r}. {decode_prompt}", 128)
        results[name]["decode"].append(answer["exo"]["decode_tokens_per_second"])
        if before:
            after = (group_stats(leader), group_stats(follower))
            for role, b, a in zip(("leader", "follower"), before, after):
                profile[role] += a.get("collective_seconds", 0) - b.get("collective_seconds", 0)
            profile["all_reduces"] += after[0].get("all_reduces", 0) - before[0].get("all_reduces", 0)
            profile["tokens"] += answer["usage"]["completion_tokens"]
            profile["seconds"] += answer["exo"]["prefill_seconds"] + answer["exo"].get("decode_seconds", 0)
        texts.setdefault(name, []).append(answer["choices"][0]["message"]["content"])
    for name, api in order:
        answer = ask(api, f"Round {r}. Summarise this log in one word.\n{passage}", 1)
        rate = answer["usage"]["prompt_tokens"] / answer["exo"]["prefill_seconds"]
        results[name]["prefill"].append(rate)
    print(f"round {r}: " + "  ".join(
        f"{n} decode {results[n]['decode'][-1]:.1f} prefill {results[n]['prefill'][-1]:.1f}"
        for n in setups), flush=True)

prompt_tokens = answer["usage"]["prompt_tokens"]
print(f"medians of {rounds} rounds (tok/s; prefill of a {prompt_tokens}-token prompt, decode of 128 tokens):")
for kind in ("decode", "prefill"):
    one = statistics.median(results["single"][kind])
    two = statistics.median(results["pair"][kind])
    print(f"  {kind:8} one node {one:7.1f}   tensor pair {two:7.1f}   speed-up {two / one:.2f}x")
same = sum(a == b for a, b in zip(texts["single"], texts["pair"]))
print(f"pair's greedy answers equal to one node's: {same}/{rounds}")
if profile["all_reduces"]:
    per_token = 1e3 * profile["seconds"] / profile["tokens"]
    print(f"pair, decode requests: {profile['tokens']} tokens, {profile['all_reduces']} all-reduces "
          f"({profile['all_reduces'] / profile['tokens']:.0f} per token); {per_token:.2f} ms per token, of which "
          f"in all-reduces (waiting included): leader {1e3 * profile['leader'] / profile['tokens']:.2f} ms, "
          f"follower {1e3 * profile['follower'] / profile['tokens']:.2f} ms "
          f"({1e6 * profile['follower'] / profile['all_reduces']:.0f} us per all-reduce on the follower)")
PY
echo "group counters on the leader:"
curl -s "http://127.0.0.1:$leader/metrics" | grep -E '^exo_group_(batches_led|all_reduces|bytes_sent)_total'
