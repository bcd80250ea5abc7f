#!/usr/bin/env bash
# Allocations per message of SocketIPC's benchmark server and client (W2 rr, W3 stream): runs each workload with n
# and 2n messages under malloc-count.so and divides the difference by n, so that setup costs cancel out.
#   Benchmarks/tools/allocations.sh            (after: swift build -c release --product socketipc-bench)
#   WORKLOADS="rr typed-rr-binary" Benchmarks/tools/allocations.sh   (other workloads; default rr and stream)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench=${BENCH_BINARY:-$here/../../.build/release/socketipc-bench}
work=$(mktemp -d /tmp/sipc-alloc-XXXXXX)
trap 'rm -rf "$work"' EXIT
cc -O2 -shared -fPIC -o "$work/malloc-count.so" "$here/malloc-count.c" -ldl

# count WORKLOAD N: prints "server client" allocation totals of one run.
count() {
    local socket=$work/s.sock
    LD_PRELOAD=$work/malloc-count.so "$bench" server --socket "$socket" --workload "$1" 2>"$work/server.err" &
    local server=$!
    for _ in $(seq 200); do [[ -S $socket ]] && break; sleep 0.05; done
    LD_PRELOAD=$work/malloc-count.so "$bench" client --socket "$socket" --workload "$1" --n "$2" >/dev/null 2>"$work/client.err"
    kill -TERM "$server" && wait "$server" || true
    echo "$(awk '/allocations:/ { print $2 }' "$work/server.err") $(awk '/allocations:/ { print $2 }' "$work/client.err")"
}

for workload in ${WORKLOADS:-rr stream}; do
    n=$([[ $workload == rr ]] && echo 20000 || echo 200000)
    read -r s1 c1 <<<"$(count "$workload" "$n")"
    read -r s2 c2 <<<"$(count "$workload" $((2 * n)))"
    # The client runs n/10 warm-up operations too: 1.1 n timed and untimed operations per run.
    awk -v w="$workload" -v n="$n" -v s1="$s1" -v s2="$s2" -v c1="$c1" -v c2="$c2" 'BEGIN {
        ops = 1.1 * n
        printf "%s: server %.2f, client %.2f allocations per message\n", w, (s2 - s1) / ops, (c2 - c1) / ops
    }'
done
