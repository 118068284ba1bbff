"""Records every frame seen in the current network namespace (AF_PACKET, all interfaces)
to a file until a stop file appears: tcpdump's job, with nothing to install."""
import os
import socket
import sys

out, stop = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
sock.settimeout(0.2)
frames = 0
with open(out, "wb") as f:
    while not os.path.exists(stop):
        try:
            frame = sock.recv(65535)
        except socket.timeout:
            continue
        f.write(len(frame).to_bytes(4, "big") + frame)
        frames += 1
print(frames)
