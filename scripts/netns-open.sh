#!/usr/bin/env bash
# An open node (no cluster key, default flags) and a stranger on the same link, in two
# network namespaces joined by a bridge. The stranger keeps a bait port open, sends unicast
# JSON announcements to the node's discovery port naming the bait as its gRPC port (no key
# is needed to write one), and tries the node's API and gRPC ports from the link.
# Passes when the node counted every datagram as refused (not from loopback), lists no
# peer, never dialled the bait, and neither of its ports answers the stranger: an open node
# keeps to loopback. Needs root (ip netns). Everything it makes is removed on exit.
#
#   scripts/netns-open.sh            (uses target/release/exo; EXO_BIN overrides)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exo="${EXO_BIN:-$root/target/release/exo}"
export EXO_MODELS_DIR="${EXO_MODELS_DIR:-$root/models/weights}"
[ "$(id -u)" -eq 0 ] || { echo "netns-open: needs root (ip netns)" >&2; exit 2; }
[ -x "$exo" ] || { echo "netns-open: no exo binary at $exo (cargo build --release, or set EXO_BIN)" >&2; exit 2; }
"$root/scripts/fetch-model.sh" >/dev/null

tag="o$$"
switch="exo-$tag-sw"
work="$(mktemp -d)"
pids=()
namespaces=("$switch")
bait_port=50061
datagrams=5

cleanup() {
    touch "$work/done" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
fail() {
    echo "netns-open: $*" >&2
    for log in "$work"/*.log; do echo "--- $log" >&2; tail -15 "$log" >&2; done
    exit 1
}

ip netns add "$switch"
ip -n "$switch" link add "br$tag" type bridge
ip -n "$switch" link set "br$tag" up
for i in 1 2; do
    ns="exo-$tag-$i"
    namespaces+=("$ns")
    ip netns add "$ns"
    ip link add "veth$tag$i" netns "$ns" type veth peer name "port$tag$i" netns "$switch"
    ip -n "$switch" link set "port$tag$i" master "br$tag" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.79.0.$i/24" dev "veth$tag$i"
    ip -n "$ns" link set "veth$tag$i" up
done

# The node: default flags, no key. Only its data directory's home is ours.
XDG_DATA_HOME="$work/data" RUST_LOG=info ip netns exec "exo-$tag-1" "$exo" node --device cpu \
    --node-id open-node >"$work/node.log" 2>&1 &
pids+=($!)

# The node's udp_discovery and grpc_server info, read on its own loopback.
report() {
    ip netns exec "exo-$tag-1" python3 -c '
import json, urllib.request
report = json.load(urllib.request.urlopen("http://127.0.0.1:52415/v1/resources", timeout=2))
info = {r["type"]: r["info"] for r in report["resources"]}
print(json.dumps({"discovery": info["udp_discovery"], "grpc": info["grpc_server"]}))' 2>/dev/null
}
deadline=$((SECONDS + 60))
until state="$(report)" && [ "$(echo "$state" | python3 -c 'import json,sys; print(json.load(sys.stdin)["grpc"]["listen"] or "")')" != "" ]; do
    [ $SECONDS -lt $deadline ] || fail "the node did not come up"
    sleep 0.1
done
grpc_port="$(echo "$state" | python3 -c 'import json,sys; print(json.load(sys.stdin)["grpc"]["listen"].rsplit(":", 1)[1])')"
echo "the open node is up (gRPC port $grpc_port)"

ip netns exec "exo-$tag-2" python3 "$root/scripts/netns/stranger.py" 10.79.0.1 "$grpc_port" 52415 \
    "$bait_port" "$datagrams" "$work/done" >"$work/stranger.out" 2>"$work/stranger.log" &
stranger=$!
pids+=($stranger)

# Wait until the node has handled the stranger's datagrams: refused (counted), or taken on.
until state="$(report)" && echo "$state" | python3 -c '
import json, sys
state, want = json.load(sys.stdin), int(sys.argv[1])
discovery = state["discovery"]
refused = discovery["datagrams"]["refused"].get("not_loopback", 0)
adopted = any(p["node_id"] == "stranger" for p in discovery["peers"])
sys.exit(0 if refused >= want or adopted else 1)' "$datagrams"; do
    kill -0 "$stranger" 2>/dev/null || fail "the stranger died: $(cat "$work/stranger.log")"
    [ $SECONDS -lt $((deadline + 30)) ] || fail "the node never handled the stranger's datagrams: $state"
    sleep 0.1
done
touch "$work/done"
wait "$stranger" || fail "the stranger failed: $(cat "$work/stranger.log")"
result="$(tail -1 "$work/stranger.out")"
state="$(report)"
echo "stranger: $result"

python3 - "$state" "$result" "$datagrams" <<'PY' || fail "the stranger got something from the open node"
import json, sys
state, result, sent = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
discovery = state["discovery"]
peers = [p["node_id"] for p in discovery["peers"]]
refused = discovery["datagrams"]["refused"].get("not_loopback", 0)
print(f"node: peers {peers}, refused not-loopback datagrams {refused}, loopback only {discovery['loopback_only']}")
print(f"stranger: adopted {int('stranger' in peers)}, dials {result['bait_connections']}, reachable {result['reachable']}")
assert peers == [], peers
assert refused == sent, refused
assert result["bait_connections"] == 0, result
assert result["reachable"] == {"api": False, "grpc": False}, result
PY
grep -q "discovered peer stranger" "$work/node.log" && fail "the node logged the stranger as a peer"
echo "netns-open: ok"
