#!/usr/bin/env bash
# The payload-size sweep (issue 13): for payloads of 64 B, 4 KiB, 64 KiB, 1 MiB and 4 MiB, the shared harness's `rr`
# workload (round trips, p50/p99) and its `bulk` workload (pipelined one-way messages, then a barrier: the time per
# one-way message) with --size set to each size, for every implementation given, fresh server per run.
#
#   Benchmarks/sweep.sh [IMPL...] [--quick] [--repeat N] [--sizes S,S,...] [--results FILE]
#   Benchmarks/tools/sweep-table.py FILE          # a markdown table per shape, ratios against c
#
# IMPL is a folder with an impl.sh as ../shared/bench/README.md defines it, or the name of one of the harness's own
# (c, go-framed, nio); default: c go-framed and this folder's socketipc, socketipc-relay-socket and socketipc-shm.
# Each line is the client's own JSON line (workload "rr" or "bulk", with "size") with "impl", "sweep":true and "ts"
# added, the harness's format. The harness's clients and servers take any size from 1 byte to 16 MiB.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BENCH_DIR=${BENCH_DIR:-$(cd "$HERE/../../shared/bench" 2>/dev/null && pwd || true)}
OUT=${BENCH_OUT:-$HOME/.cache/uds-bench}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}

impls=() quick=0 repeat=1 results="" sizes=(64 4096 65536 1048576 4194304)
while (($#)); do
    case $1 in
    --quick) quick=1 && shift ;;
    --repeat) repeat=$2 && shift 2 ;;
    --results) results=$2 && shift 2 ;;
    --sizes) IFS=, read -ra sizes <<<"$2" && shift 2 ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' && exit 0 ;;
    -*) echo "unknown option: $1" >&2 && exit 2 ;;
    *) impls+=("$1") && shift ;;
    esac
done
((${#impls[@]})) || impls=(c go-framed "$HERE/socketipc" "$HERE/socketipc-relay-socket" "$HERE/socketipc-shm")
mkdir -p "$OUT"
results=${results:-$OUT/sweep-$(date -u +%Y%m%d-%H%M%S).jsonl}

# count SHAPE SIZE: timed operations for one run, so that each moves about the same bytes (bounded both ways).
count() {
    local budget min max n
    if [[ $1 == rr ]]; then budget=$((256 << 20)) min=200 max=20000; else budget=$((1 << 30)) min=256 max=200000; fi
    ((quick)) && budget=$((budget / 4)) min=$((min / 2)) max=$((max / 4))
    n=$((budget / $2))
    ((n < min)) && n=$min
    ((n > max)) && n=$max
    echo "$n"
}

impl_dir() {
    if [[ -n $BENCH_DIR && -f $BENCH_DIR/$1/impl.sh ]]; then echo "$BENCH_DIR/$1"
    elif [[ -f $1/impl.sh ]]; then (cd "$1" && pwd)
    else echo "no impl.sh for implementation '$1'" >&2 && return 1
    fi
}

load_impl() {
    IMPL_DIR=$(impl_dir "$1")
    IMPL_NAME=$(basename "$IMPL_DIR")
    BUILD_DIR=$OUT/build/$IMPL_NAME
    WORKLOADS="" SERVER=() CLIENT=()
    mkdir -p "$BUILD_DIR"
    # shellcheck source=/dev/null
    source "$IMPL_DIR/impl.sh"
}

build_impl() (
    load_impl "$1"
    echo "building $IMPL_NAME (log: $BUILD_DIR/build.log)" >&2
    cd "$IMPL_DIR"
    build >"$BUILD_DIR/build.log" 2>&1 || { tail -n 30 "$BUILD_DIR/build.log" >&2 && exit 1; }
)

# wait_ready SOCKET: until the server accepts a connection (a half-closed probe) or exits, as run.sh does.
wait_ready() {
    for _ in $(seq 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        [[ -S $1 ]] && python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.shutdown(socket.SHUT_WR)
s.recv(64)' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

stop_server() {
    if [[ -n ${SERVER_PID:-} ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}

# run_one IMPL SHAPE SIZE: a fresh server, one client run, the line printed and recorded.
run_one() (
    load_impl "$1"
    local shape=$2 size=$3 n line
    [[ " $WORKLOADS " == *" $shape "* ]] || exit 0
    n=$(count "$shape" "$size")
    RUN_DIR=$(mktemp -d "$TMP/$IMPL_NAME-$shape-$size.XXXX")
    local sock=$RUN_DIR/s.sock
    trap stop_server EXIT
    "${SERVER[@]}" --socket "$sock" --workload "$shape" >"$RUN_DIR/server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$sock" || { echo "error: $IMPL_NAME server did not start" >&2 && cat "$RUN_DIR/server.log" >&2 && exit 1; }
    timeout "$RUN_TIMEOUT" "${CLIENT[@]}" --socket "$sock" --workload "$shape" --n "$n" --conns 1 --size "$size" \
        >"$RUN_DIR/client.out" 2>"$RUN_DIR/client.err" ||
        { echo "error: $IMPL_NAME $shape $size client failed" >&2 && cat "$RUN_DIR"/client.err "$RUN_DIR"/server.log >&2 && exit 1; }
    line=$(tail -n 1 "$RUN_DIR/client.out")
    [[ $line == \{*\} ]] || { echo "error: $IMPL_NAME $shape $size printed no JSON line" >&2 && exit 1; }
    line="{\"impl\":\"$IMPL_NAME\",\"sweep\":true,${line#\{}"
    line="${line%\}},\"ts\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
    echo "$line"
    echo "$line" >>"$results"
)

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d "${TMPDIR:-/tmp}/uds-sweep.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

built=()
for impl in "${impls[@]}"; do
    if build_impl "$impl"; then built+=("$impl"); else echo "skipping $impl: build failed" >&2; fi
done
failures=0
for ((rep = 1; rep <= repeat; rep++)); do
    for size in "${sizes[@]}"; do
        for shape in bulk rr; do
            for impl in "${built[@]}"; do
                run_one "$impl" "$shape" "$size" || failures=$((failures + 1))
            done
        done
    done
done
echo "results appended to $results" >&2
((failures == 0)) || { echo "$failures run(s) failed" >&2 && exit 1; }
