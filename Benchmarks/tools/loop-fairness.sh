#!/usr/bin/env bash
# How long a benign client's requests wait while other connections of the same server flood it with cheap frames:
# starts `socket-ipc serve` (each BINARY in turn, a fresh server on a socket in a temporary folder), HOSTILE peers
# (default 4, so that every event loop of a 2-core machine has some) that each send call credit for calls never
# opened (13-byte frames the server ignores) as fast as it takes them, and one client that makes ROUNDTRIPS requests
# (default 3000) one after another; prints the percentiles of its round trips. Needs python3.
#   Benchmarks/tools/loop-fairness.sh BINARY... [-- HOSTILE ROUNDTRIPS]
# Example: Benchmarks/tools/loop-fairness.sh /tmp/before/socket-ipc .build/release/socket-ipc
set -euo pipefail
binaries=()
while [[ $# -gt 0 && "$1" != "--" ]]; do binaries+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
hostile=${1:-4}
roundtrips=${2:-3000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/hostile.py" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"SIPC\x01\x01\x00\x00")
got = b""
while len(got) < 8:
    piece = s.recv(8 - len(got))
    if not piece: sys.exit(0)
    got += piece
chunk = b"".join(struct.pack(">IBII", 9, 0x0A, 2 * i + 1000001, 100) for i in range(80000))
try:
    while True: s.sendall(chunk)
except OSError:
    pass
PY
cat > "$work/benign.py" <<'PY'
import socket, struct, sys, time
b = socket.socket(socket.AF_UNIX); b.connect(sys.argv[1]); b.sendall(b"SIPC\x01\x00\x00\x00")
def receive(count):
    data = b""
    while len(data) < count:
        piece = b.recv(count - len(data))
        if not piece: raise SystemExit("the server closed the connection")
        data += piece
    return data
receive(8)
times = []
for i in range(1, int(sys.argv[2]) + 1):
    start = time.perf_counter()
    b.sendall(struct.pack(">IBI", 9, 0x02, i) + b"ping")
    length, kind = struct.unpack(">IB", receive(5)); receive(length - 1)
    times.append((time.perf_counter() - start) * 1000)
times.sort()
pick = lambda q: times[min(len(times) - 1, int(len(times) * q))]
print(f"p50 {pick(0.5):.2f} p90 {pick(0.9):.2f} p99 {pick(0.99):.2f} max {times[-1]:.2f} ms")
PY
for binary in "${binaries[@]}"; do
    dir=$(mktemp -d "$work/run.XXXXXX")
    "$binary" serve "$dir/s.sock" > "$dir/out" 2>&1 &
    server=$!
    for _ in $(seq 200); do [[ -S "$dir/s.sock" ]] && break; sleep 0.05; done
    peers=()
    for _ in $(seq "$hostile"); do python3 "$work/hostile.py" "$dir/s.sock" & peers+=($!); done
    echo -n "$binary ($hostile flooding peers): "
    timeout 300 python3 "$work/benign.py" "$dir/s.sock" "$roundtrips" || echo "failed"
    kill "${peers[@]}" 2>/dev/null || true
    wait "${peers[@]}" 2>/dev/null || true
    kill -INT "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
done
