#!/usr/bin/env bash
# W2 (request/reply) of several socketipc-bench builds, alternated: per run a fresh server and client on a socket in
# a temporary folder, both under `perf stat -e task-clock`; prints one line per run: the build's file name, round
# trips per second, p50 in µs, and the CPU of both sides in µs per round trip (over N plus the client's N/10 warm-up).
#   EXTRA="--busy-poll-us 200" Benchmarks/tools/rr-cpu-ab.sh N ROUNDS BENCH...
# EXTRA is passed to both sides. Needs `perf`. Example:
#   Benchmarks/tools/rr-cpu-ab.sh 50000 10 /tmp/before/socketipc-bench .build/release/socketipc-bench
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 N ROUNDS BENCH..." >&2; exit 2; }
n=$1 rounds=$2
shift 2
work=$(mktemp -d /tmp/sipc-rr-cpu-XXXXXX)
trap 'rm -rf "$work"' EXIT
for _ in $(seq "$rounds"); do
    for bench in "$@"; do
        socket=$work/s.sock
        rm -f "$socket" "$socket.lock"
        # shellcheck disable=SC2086
        perf stat -e task-clock -x, -o "$work/server.stat" "$bench" server --socket "$socket" --workload rr ${EXTRA:-} \
            >/dev/null 2>&1 &
        runner=$!
        for _ in $(seq 200); do [[ -S $socket ]] && break; sleep 0.05; done
        # shellcheck disable=SC2086
        line=$(perf stat -e task-clock -x, -o "$work/client.stat" "$bench" client --socket "$socket" --workload rr \
            --n "$n" ${EXTRA:-})
        pkill -TERM -P "$runner" || true
        wait "$runner" || true
        server=$(grep task-clock "$work/server.stat" | cut -d, -f1)
        client=$(grep task-clock "$work/client.stat" | cut -d, -f1)
        LINE=$line python3 -c '
import json, os, sys
line = json.loads(os.environ["LINE"])
bench, n, server, client = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(bench, round(line["ops_per_s"]), line["p50_us"], round((server + client) * 1000 / (n * 1.1), 1))
' "$(basename "$(dirname "$bench")")/$(basename "$bench")" "$n" "$server" "$client"
    done
done
