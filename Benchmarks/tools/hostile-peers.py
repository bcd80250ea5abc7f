#!/usr/bin/env python3
"""Memory of a framed `socket-ipc serve` under hostile peers: its VmRSS before, during and after each attack.

    swift build -c release --product socket-ipc
    Benchmarks/tools/hostile-peers.py .build/release/socket-ipc [--case unread|trickle|all]

Cases (each against a fresh server, each figure in MiB of the server's VmRSS):
  unread   hello, then 4096 requests of 64 KiB (`00010005 02 <id> <64 KiB>`) written without ever reading a reply;
           the writer stops when the kernel has not taken a byte for 3 s (the server stopped reading).
  trickle  hello, then a request header `01000005 02 00000001` and payload bytes one byte per write, on 64
           connections in turn (so that each read of the server gets one byte); reports bytes of memory per byte.
Each case prints the baseline, the peak during the attack, and the RSS 2 s after the peers disconnected.
The third figure of SECURITY.md, requests held by a slow handler, needs a handler of its own (the CLI's server
answers at once): `SOCKETIPC_MEASURE=1 swift test --filter HostilePeerFigures` prints it.
"""
import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HELLO = b"SIPC\x01\x00\x00\x00"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


class Server:
    def __init__(self, binary):
        self.directory = tempfile.mkdtemp(prefix="sipc-hostile-")
        self.path = os.path.join(self.directory, "s.sock")
        self.process = subprocess.Popen(
            [binary, "serve", "--socket", self.path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(400):
            if os.path.exists(self.path):
                break
            time.sleep(0.025)
        else:
            raise RuntimeError("the server did not create its socket")
        # Warm up: one honest request, so that the baseline includes the event loops' first buffers.
        honest = self.connect()
        honest.sendall(HELLO + request(1, b"warm"))
        read_exactly(honest, 8 + 9 + 4)
        honest.close()
        time.sleep(0.5)

    def connect(self):
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(self.path)
        return peer

    def rss(self):
        return rss_kib(self.process.pid)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def request(request_id, payload):
    return struct.pack(">IBI", 5 + len(payload), 0x02, request_id) + payload


def read_exactly(peer, count):
    data = b""
    while len(data) < count:
        chunk = peer.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def unread(binary):
    server = Server(binary)
    baseline = server.rss()
    peer = server.connect()
    peer.setblocking(False)
    payload = bytes(64 * 1024)
    pending = HELLO
    sent_requests = 0
    peak = baseline
    last_progress = time.monotonic()
    written = 0
    while sent_requests < 4096 or pending:
        if not pending:
            sent_requests += 1
            pending = request(sent_requests, payload)
        try:
            count = peer.send(pending)
            pending = pending[count:]
            written += count
            last_progress = time.monotonic()
        except BlockingIOError:
            peak = max(peak, server.rss())
            if time.monotonic() - last_progress > 3:
                break
            time.sleep(0.01)
    peak = max(peak, server.rss())
    time.sleep(1)
    peak = max(peak, server.rss())
    print(
        f"unread:  baseline {mib(baseline)}, peak {mib(peak)} (+{mib(peak - baseline)}) with "
        f"{written / 1048576:.1f} MiB of requests written ({sent_requests} begun, 4096 tried)",
        flush=True,
    )
    peer.close()
    time.sleep(2)
    after = server.rss()
    print(f"unread:  after disconnect {mib(after)} (+{mib(after - baseline)})", flush=True)
    server.stop()


def trickle(binary, bytes_per_connection, connections):
    server = Server(binary)
    baseline = server.rss()
    peers = [server.connect() for _ in range(connections)]
    for peer in peers:
        peer.sendall(HELLO + struct.pack(">IBI", 0x01000005, 0x02, 1))
    peak = baseline
    started = time.monotonic()
    for index in range(bytes_per_connection):
        for peer in peers:
            peer.send(b"\x00")
        if index % 512 == 511:
            peak = max(peak, server.rss())
    time.sleep(0.5)
    peak = max(peak, server.rss())
    total = bytes_per_connection * connections
    print(
        f"trickle: baseline {mib(baseline)}, peak {mib(peak)} (+{mib(peak - baseline)}) after {total} payload bytes "
        f"one byte per write on {connections} connections ({time.monotonic() - started:.1f} s): "
        f"{(peak - baseline) * 1024 / total:.1f} bytes of memory per byte",
        flush=True,
    )
    for peer in peers:
        peer.close()
    time.sleep(2)
    after = server.rss()
    print(f"trickle: after disconnect {mib(after)} (+{mib(after - baseline)})", flush=True)
    server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary", help="the built socket-ipc")
    parser.add_argument("--case", default="all", choices=["unread", "trickle", "all"])
    parser.add_argument("--trickle-bytes", type=int, default=16384, help="payload bytes per trickling connection")
    parser.add_argument("--trickle-connections", type=int, default=64)
    arguments = parser.parse_args()
    if arguments.case in ("unread", "all"):
        unread(arguments.binary)
    if arguments.case in ("trickle", "all"):
        trickle(arguments.binary, arguments.trickle_bytes, arguments.trickle_connections)


if __name__ == "__main__":
    sys.exit(main())
