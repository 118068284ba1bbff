"""A stranger on an open node's network (no cluster key anywhere). It keeps a bait TCP
port open, sends unicast JSON announcements (no key needed) to the node's discovery port
naming the bait as its gRPC port, and tries the node's API and gRPC ports. Waits for
`done_file`, then prints one JSON line: the bait's connections (a node that adopted the
stranger dials it) and whether the node's ports answered.

    stranger.py NODE_IP GRPC_PORT API_PORT BAIT_PORT COUNT DONE_FILE
"""
import json
import os
import socket
import sys
import threading
import time

DISCOVERY = 52416
node_ip, grpc_port, api_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bait_port, count, done_file = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]

bait = {"connections": 0}
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", bait_port))
server.listen()
server.settimeout(0.2)


def serve_bait():
    while not os.path.exists(done_file):
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        bait["connections"] += 1
        conn.close()


bait_thread = threading.Thread(target=serve_bait)
bait_thread.start()

tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    tx.sendto(json.dumps({
        "protocol": "exo-rs", "version": 1, "node_id": "stranger", "grpc_port": bait_port,
        "model_id": "smollm2-135m", "interface_priority": 3,
        "capabilities": {"memory_bytes": 1 << 40, "available_memory_bytes": 1 << 40,
                         "cpu_model": "stranger", "cpu_cores": 64, "gpu_name": "",
                         "gpu_memory_bytes": 0, "engine_device": "cpu"},
        "departing": False, "sent_at_ms": int(time.time() * 1000), "nonce": os.urandom(16).hex(),
    }).encode(), (node_ip, DISCOVERY))
print(json.dumps({"phase": "sent", "datagrams": count}), flush=True)


def reachable(port):
    try:
        with socket.create_connection((node_ip, port), timeout=3):
            return True
    except OSError:
        return False


ports = {"api": reachable(api_port), "grpc": reachable(grpc_port)}
while not os.path.exists(done_file):
    time.sleep(0.05)
bait_thread.join()
print(json.dumps({"phase": "done", "bait_connections": bait["connections"], "reachable": ports}),
      flush=True)
