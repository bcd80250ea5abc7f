#!/usr/bin/env bash
# The CPU time of a benchmark server, several builds compared: runs WORKLOAD once per build per round (rounds
# interleaved, a fresh server each time on a socket in a temporary folder), the server under `perf stat -e task-clock`,
# and prints per build the medians of the client's rate and of the server's and the client's CPU milliseconds.
#   Benchmarks/tools/server-cpu-ab.sh WORKLOAD N ROUNDS BENCH...
# Each BENCH is a socketipc-bench executable (say a release build of an earlier commit in a git worktree). The client
# is each build's own, or CLIENT=BENCH for one client for all, so that only the server differs. Needs `perf`.
# Example: Benchmarks/tools/server-cpu-ab.sh stream 8000000 7 /tmp/before/socketipc-bench .build/release/socketipc-bench
set -euo pipefail
[[ $# -ge 4 ]] || { echo "usage: $0 WORKLOAD N ROUNDS BENCH..." >&2; exit 2; }
workload=$1 n=$2 rounds=$3
shift 3
work=$(mktemp -d /tmp/sipc-server-cpu-XXXXXX)
trap 'rm -rf "$work"' EXIT
for _ in $(seq "$rounds"); do
    for bench in "$@"; do
        socket=$work/s.sock
        rm -f "$socket" "$socket.lock"
        perf stat -e task-clock -x, -o "$work/server.stat" "$bench" server --socket "$socket" --workload "$workload" \
            >/dev/null 2>&1 &
        runner=$!
        for _ in $(seq 200); do [[ -S $socket ]] && break; sleep 0.05; done
        line=$(perf stat -e task-clock -x, -o "$work/client.stat" \
            "${CLIENT:-$bench}" client --socket "$socket" --workload "$workload" --n "$n")
        pkill -TERM -P "$runner" || true
        wait "$runner" || true
        rate=$(grep -o '"\(msgs\|ops\|conns\)_per_s":[0-9.]*' <<<"$line" | cut -d: -f2)
        echo "$bench $rate $(grep task-clock "$work/server.stat" | cut -d, -f1) $(grep task-clock "$work/client.stat" | cut -d, -f1)"
    done
done | python3 -c '
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in sys.stdin:
    parts = line.split()
    if len(parts) == 4:
        runs[parts[0]].append([float(x) for x in parts[1:]])
for bench, values in runs.items():
    median = lambda i: statistics.median(v[i] for v in values)
    print(f"{bench}: rate {median(0):,.0f}, server {median(1):.1f} ms, client {median(2):.1f} ms, rates {sorted(int(v[0]) for v in values)}")
'
