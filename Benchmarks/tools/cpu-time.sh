#!/usr/bin/env bash
# CPU time of a benchmark server and client, each under /usr/bin/time, on a socket in a fresh temporary folder:
#   Benchmarks/tools/cpu-time.sh SERVER-COMMAND... -- CLIENT-COMMAND...
# Every SOCK in the arguments becomes the socket's path. Prints the client's JSON line, then one line per side:
#   client user 0.75 sys 1.57 wall 2.31
#   server user 0.79 sys 1.51 wall 2.52
# Example (W2 in the latency mode, after `swift build -c release --product socketipc-bench`):
#   B=.build/release/socketipc-bench
#   Benchmarks/tools/cpu-time.sh $B server --socket SOCK --workload rr --busy-poll-us 200 -- \
#       $B client --socket SOCK --workload rr --n 200000 --busy-poll-us 200
set -euo pipefail
work=$(mktemp -d /tmp/sipc-cpu-XXXXXX)
socket=$work/s.sock
server=() client=()
while [[ $# -gt 0 && $1 != -- ]]; do server+=("${1//SOCK/$socket}"); shift; done
[[ $# -gt 0 ]] || { echo "usage: $0 SERVER-COMMAND... -- CLIENT-COMMAND..." >&2; exit 2; }
shift
for argument in "$@"; do client+=("${argument//SOCK/$socket}"); done

/usr/bin/time -f "server user %U sys %S wall %e" -o "$work/server.time" "${server[@]}" 2>"$work/server.err" &
runner=$!
trap 'kill -TERM $(pgrep -P $runner) 2>/dev/null || true; wait $runner 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 200); do [[ -S $socket ]] && break; sleep 0.05; done
[[ -S $socket ]] || { echo "the server did not create $socket:" >&2; cat "$work/server.err" >&2; exit 1; }
/usr/bin/time -f "client user %U sys %S wall %e" -o "$work/client.time" "${client[@]}"
kill -TERM "$(pgrep -P $runner)"
wait $runner || true
cat "$work/client.time" "$work/server.time"
