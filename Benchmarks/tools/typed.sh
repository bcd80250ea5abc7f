#!/usr/bin/env bash
# What a typed call and a typed stream of the services layer cost over raw frames: runs the raw workloads W2 `rr`
# and W3 `stream` and their typed twins `typed-rr` and `typed-stream` (socketipc-bench's own, not the shared
# harness's), interleaved, each on a fresh server, and prints the JSON lines (the harness's format, with "impl" and
# "ts") and a table of medians with the typed/raw ratios. The `-binary` twins use a hand-written binary codec instead
# of JSON, to tell the services layer's own cost from Foundation's JSON.
#   Benchmarks/tools/typed.sh [--repeat N] [--quick] [--results FILE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repeat=3 quick=0 results=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --repeat) repeat=$2 && shift 2 ;;
    --quick) quick=1 && shift ;;
    --results) results=$2 && shift 2 ;;
    *) echo "usage: $0 [--repeat N] [--quick] [--results FILE]" >&2 && exit 2 ;;
    esac
done
swift build -c release --product socketipc-bench >&2
bench=.build/release/socketipc-bench
work=$(mktemp -d /tmp/sipc-typed-XXXXXX)
trap 'rm -rf "$work"' EXIT
lines=$work/lines.jsonl

run_one() { # workload n
    local sock=$work/s.sock
    rm -f "$sock"
    "$bench" server --socket "$sock" --workload "$1" >"$work/server.log" 2>&1 &
    local server=$!
    for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
    local line
    line=$(timeout 300 "$bench" client --socket "$sock" --workload "$1" --n "$2")
    kill -TERM "$server" && wait "$server" || true
    line="{\"impl\":\"socketipc\",${line#\{}"
    line="${line%\}},\"ts\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
    echo "$line" | tee -a "$lines"
    [[ -z $results ]] || echo "$line" >>"$results"
}

for _ in $(seq "$repeat"); do
    if ((quick)); then
        run_one rr 50000; run_one typed-rr 50000; run_one typed-rr-binary 50000
        run_one stream 500000; run_one typed-stream 200000; run_one typed-stream-binary 500000
    else
        run_one rr 200000; run_one typed-rr 200000; run_one typed-rr-binary 200000
        run_one stream 2000000; run_one typed-stream 500000; run_one typed-stream-binary 2000000
    fi
done

python3 - "$lines" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def median(w, key):
    values = [r[key] for r in rows if r["workload"] == w]
    return statistics.median(values) if values else float("nan")
print("| workload, figure | raw | typed | typed / raw |")
print("|---|---|---|---|")
for raw, typed, key in [("rr", "typed-rr", "ops_per_s"), ("rr", "typed-rr", "p50_us"), ("rr", "typed-rr", "p99_us"),
                        ("rr", "typed-rr-binary", "ops_per_s"), ("rr", "typed-rr-binary", "p50_us"),
                        ("stream", "typed-stream", "msgs_per_s"), ("stream", "typed-stream-binary", "msgs_per_s")]:
    a, b = median(raw, key), median(typed, key)
    print(f"| {typed} {key} | {a:,.1f} | {b:,.1f} | {b / a:.2f} |")
PY
