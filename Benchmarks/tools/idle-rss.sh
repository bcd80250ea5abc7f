#!/usr/bin/env bash
# The resident memory of an idle server, as the shared harness's idle-mem workload takes its "before" figure (VmRSS
# about a second after the server accepted one connection), and which mappings hold it:
#   Benchmarks/tools/idle-rss.sh SERVER-COMMAND...
# Every SOCK in the arguments becomes the socket's path. Prints VmRSS, then the mappings holding more than 200 KiB
# (KiB, path; the unnamed ones are anonymous memory: heap, stacks). Example:
#   Benchmarks/tools/idle-rss.sh .build/release/socketipc-bench server --socket SOCK --workload idle-mem
set -euo pipefail
work=$(mktemp -d /tmp/sipc-rss-XXXXXX)
socket=$work/s.sock
server=()
for argument in "$@"; do server+=("${argument//SOCK/$socket}"); done
"${server[@]}" >"$work/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 200); do [[ -S $socket ]] && break; sleep 0.05; done
[[ -S $socket ]] || { echo "the server did not create $socket" >&2; cat "$work/server.log" >&2; exit 1; }
python3 - "$socket" "$pid" <<'PYTHON'
import re, socket, sys, time
probe = socket.socket(socket.AF_UNIX)
probe.connect(sys.argv[1])
time.sleep(1.0)  # as run.sh: a second after the server accepted the probe
pid = sys.argv[2]
print(next(line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:")).strip())
sizes, name = {}, None
for line in open(f"/proc/{pid}/smaps"):
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        fields = line.split()
        name = fields[5] if len(fields) > 5 else "(anonymous)"
    elif line.startswith("Rss:"):
        sizes[name] = sizes.get(name, 0) + int(line.split()[1])
for name, kib in sorted(sizes.items(), key=lambda item: -item[1]):
    if kib > 200:
        print(f"{kib:6d} {name}")
probe.close()
PYTHON
