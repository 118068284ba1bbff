#!/usr/bin/env bash
# A keyed cluster on a shared network, attacked. Three exo nodes with one cluster key and
# a fourth host without it, in network namespaces on one bridge. The intruder runs an exo
# node of its own with another key, forges announcements (a huge-memory node that would be
# shard 0) and "departing" datagrams, replays recorded real datagrams, calls the nodes'
# gRPC ports in plain text and over TLS without a certificate, and keeps a bait port open
# for any work a fooled node would send. Meanwhile a prompt runs through the ring and every
# frame on the bridge is recorded (scripts/netns/capture.py, tcpdump's job).
# Passes when: the three list only each other, answer the prompt correctly, count the
# refused datagrams, the intruder got no byte and no gRPC answer, and the capture (which
# does hold the cluster's traffic) has no prompt text and no plain-text HTTP/2 in it.
# Needs root (ip netns). Everything it makes is removed on exit.
#
#   scripts/netns-trust.sh            (uses target/release/exo; EXO_BIN overrides)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exo="${EXO_BIN:-$root/target/release/exo}"
export EXO_MODELS_DIR="${EXO_MODELS_DIR:-$root/models/weights}"
[ "$(id -u)" -eq 0 ] || { echo "netns-trust: needs root (ip netns)" >&2; exit 2; }
[ -x "$exo" ] || { echo "netns-trust: no exo binary at $exo (cargo build --release, or set EXO_BIN)" >&2; exit 2; }
"$root/scripts/fetch-model.sh" >/dev/null

tag="t$$"
switch="exo-$tag-sw"
work="$(mktemp -d)"
pids=()
namespaces=("$switch")
grpc_port=50051
bait_port=50052
prompt="What is the capital of Germany?"

cleanup() {
    touch "$work/done" "$work/stop-capture" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
fail() {
    echo "netns-trust: $*" >&2
    for log in "$work"/*.log; do echo "--- $log" >&2; tail -15 "$log" >&2; done
    exit 1
}

"$exo" keygen --out "$work/cluster.key" 2>/dev/null
"$exo" keygen --out "$work/wrong.key" 2>/dev/null

ip netns add "$switch"
ip -n "$switch" link add "br$tag" type bridge
ip -n "$switch" link set "br$tag" up
ip netns exec "$switch" python3 "$root/scripts/netns/capture.py" "$work/capture.bin" "$work/stop-capture" \
    >"$work/capture.out" 2>"$work/capture.log" &
capture_pid=$!
pids+=($capture_pid)

start_host() {   # index, then the node's extra flags
    local i=$1; shift
    local ns="exo-$tag-$i"
    namespaces+=("$ns")
    ip netns add "$ns"
    ip link add "veth$tag$i" netns "$ns" type veth peer name "port$tag$i" netns "$switch"
    ip -n "$switch" link set "port$tag$i" master "br$tag" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.78.0.$i/24" dev "veth$tag$i"
    ip -n "$ns" link set "veth$tag$i" up
    XDG_DATA_HOME="$work/data$i" RUST_LOG=info ip netns exec "$ns" "$exo" node --device cpu \
        --grpc-port "$grpc_port" "$@" >"$work/node$i.log" 2>&1 &
    pids+=($!)
}
for i in 1 2 3; do start_host "$i" --node-id "n$i" --cluster-key "$work/cluster.key"; done
start_host 4 --node-id intruder --cluster-key "$work/wrong.key"

api() {   # host index, path: GET from inside that host (loopback: admin allowed)
    ip netns exec "exo-$tag-$1" python3 -c '
import json, sys, urllib.request
print(json.dumps(json.load(urllib.request.urlopen("http://127.0.0.1:52415" + sys.argv[1], timeout=5))))' "$2"
}
ready_peers() {
    api "$1" /v1/topology 2>/dev/null | python3 -c '
import json, sys
t = json.load(sys.stdin)
print(" ".join(sorted(n["node_id"] for n in t["nodes"][1:] if n["link_state"] == "ready")))' 2>/dev/null || true
}

deadline=$((SECONDS + 90))
for i in 1 2 3; do
    want="$(printf 'n%s\n' 1 2 3 | grep -v "^n$i$" | tr '\n' ' ' | sed 's/ $//')"
    until [ "$(ready_peers "$i")" = "$want" ]; do
        [ $SECONDS -lt $deadline ] || fail "node $i does not see exactly $want: $(ready_peers "$i")"
        sleep 0.1
    done
done
echo "the three keyed nodes see each other"

ip netns exec "exo-$tag-4" python3 "$root/scripts/netns/intruder.py" 10.78.0.1,10.78.0.2,10.78.0.3 \
    "$grpc_port" 10.78.0.255 "$bait_port" "$work/done" n1,n2,n3 >"$work/intruder.out" 2>"$work/intruder.log" &
intruder_pid=$!
pids+=($intruder_pid)
until grep -q '"phase": "attacked"' "$work/intruder.out" 2>/dev/null; do
    kill -0 "$intruder_pid" 2>/dev/null || fail "the intruder script died: $(cat "$work/intruder.log")"
    [ $SECONDS -lt $((deadline + 60)) ] || fail "the intruder never finished its attack"
    sleep 0.1
done
echo "intruder: $(head -1 "$work/intruder.out")"

answer="$(ip netns exec "exo-$tag-1" python3 -c '
import json, sys, urllib.request
body = json.dumps({"model": "smollm2-135m", "messages": [{"role": "user", "content": sys.argv[1]}],
                   "max_tokens": 12, "temperature": 0}).encode()
request = urllib.request.Request("http://127.0.0.1:52415/v1/chat/completions", body,
                                 {"content-type": "application/json"})
reply = json.load(urllib.request.urlopen(request, timeout=120))
print(reply["choices"][0]["message"]["content"], "|", len(reply["exo"]["partition"]))' "$prompt")" \
    || fail "the prompt failed"
echo "answer: $answer"
case "$answer" in *Berlin*"| 3") ;; *) fail "wrong answer or not over three nodes: $answer" ;; esac

touch "$work/done"
wait "$intruder_pid" || true
touch "$work/stop-capture"
wait "$capture_pid" || true
result="$(tail -1 "$work/intruder.out")"
echo "intruder: $result"

python3 - "$result" "$work/capture.bin" "$prompt" <<'PY' || fail "the intruder got somewhere, or the capture shows plain text"
import json, sys
result, raw, prompt = json.loads(sys.argv[1]), open(sys.argv[2], "rb").read(), sys.argv[3]
assert result["bait"] == {"connections": 0, "bytes": 0}, result
assert result["served_plain"] == [] and result["served_tls"] == [], result
# Frames as capture.py wrote them (4-byte length, frame); the ring's own: IPv4 between
# two of the keyed nodes.
frames, at = [], 0
while at + 4 <= len(raw):
    n = int.from_bytes(raw[at:at + 4], "big")
    frames.append(raw[at + 4:at + 4 + n])
    at += 4 + n
members = {bytes([10, 78, 0, i]) for i in (1, 2, 3)}
ring = b"".join(f for f in frames
                if f[12:14] == b"\x08\x00" and f[26:30] in members and f[30:34] in members)
everything = b"".join(frames)
# The capture holds the cluster's traffic (announcements are authenticated, not secret;
# the ring's TLS records are there)...
assert everything.count(b'"protocol":"exo-rs"') > 10, "the capture missed the announcements"
assert b"\x17\x03\x03" in ring, "no TLS application data between the nodes in the capture"
# ...and no prompt, no answer anywhere, and no plain-text HTTP/2 or gRPC between nodes.
for needle in [prompt.encode(), b"capital of Germany", b"Berlin"]:
    assert needle not in everything, f"{needle!r} in the capture"
for needle in [b"PRI * HTTP/2.0", b"application/grpc", b"exo.node.v1"]:
    assert needle not in ring, f"{needle!r} between the nodes"
print(f"capture: {len(frames)} frames, {len(ring)} bytes between the nodes; no prompt text, no plain HTTP/2")
PY

for i in 1 2 3; do
    api "$i" /v1/resources | python3 -c '
import json, sys
i = sys.argv[1]
report = json.load(sys.stdin)
discovery = next(r for r in report["resources"] if r["type"] == "udp_discovery")["info"]
peers = sorted(p["node_id"] for p in discovery["peers"])
refused = discovery["datagrams"]["refused"]
sources = sorted(discovery["datagrams"]["refused_from"])
assert peers == sorted({"n1", "n2", "n3"} - {"n" + i}), peers
# Forged datagrams fail the MAC; recorded ones replayed from the intruder'"'"'s address are
# refused for their sender (before their nonce is looked at); only the intruder is refused.
assert refused["unauthenticated"] > 0 and refused["wrong_sender"] > 0, refused
assert sources == ["10.78.0.4"], sources
print(f"node {i}: peers {peers}, refused {refused} from {sources}")' "$i" || fail "node $i lists a stranger or counted nothing"
done
echo "netns-trust: ok"
