#!/usr/bin/env bash
# What a typed call and a typed stream of the services layer cost over raw frames: runs the raw workloads W2 `rr`
# and W3 `stream` and their typed twins `typed-rr` and `typed-stream` (socketipc-bench's own, not the shared
# harness's), interleaved, each on a fresh server, and prints the JSON lines (the harness's format, with "impl" and
# "ts") and a table of medians with the typed/raw ratios. The `-binary` twins use a hand-written binary codec instead
# of JSON, to tell the services layer's own cost from Foundation's JSON. With --before BENCH (another build's
# socketipc-bench, say of an earlier commit in a git worktree), each typed workload also runs with that binary,
# interleaved, as impl "socketipc-before", and the table compares the two.
#   Benchmarks/tools/typed.sh [--repeat N] [--quick] [--results FILE] [--before BENCH]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repeat=3 quick=0 results="" before=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --repeat) repeat=$2 && shift 2 ;;
    --quick) quick=1 && shift ;;
    --results) results=$2 && shift 2 ;;
    --before) before=$(realpath "$2") && shift 2 ;;
    *) echo "usage: $0 [--repeat N] [--quick] [--results FILE] [--before BENCH]" >&2 && exit 2 ;;
    esac
done
swift build -c release --product socketipc-bench >&2
bench=.build/release/socketipc-bench
work=$(mktemp -d /tmp/sipc-typed-XXXXXX)
trap 'rm -rf "$work"' EXIT
lines=$work/lines.jsonl

run_one() { # workload n [binary impl]
    local sock=$work/s.sock bench=${3:-$bench} impl=${4:-socketipc}
    rm -f "$sock"
    "$bench" server --socket "$sock" --workload "$1" >"$work/server.log" 2>&1 &
    local server=$!
    for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
    local line
    line=$(timeout 300 "$bench" client --socket "$sock" --workload "$1" --n "$2")
    kill -TERM "$server" && wait "$server" || true
    line="{\"impl\":\"$impl\",${line#\{}"
    line="${line%\}},\"ts\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
    echo "$line" | tee -a "$lines"
    [[ -z $results ]] || echo "$line" >>"$results"
}

run_typed() { # workload n: with this build, and with the --before build if there is one
    run_one "$1" "$2"
    [[ -z $before ]] || run_one "$1" "$2" "$before" socketipc-before
}

for _ in $(seq "$repeat"); do
    if ((quick)); then
        run_one rr 50000; run_typed typed-rr 50000; run_typed typed-rr-binary 50000
        run_one stream 500000; run_typed typed-stream 200000; run_typed typed-stream-binary 500000
    else
        run_one rr 200000; run_typed typed-rr 200000; run_typed typed-rr-binary 200000
        run_one stream 2000000; run_typed typed-stream 500000; run_typed typed-stream-binary 2000000
    fi
done

python3 - "$lines" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def median(w, key, impl="socketipc"):
    values = [r[key] for r in rows if r["workload"] == w and r["impl"] == impl]
    return statistics.median(values) if values else float("nan")
before = any(r["impl"] == "socketipc-before" for r in rows)
print("| workload, figure | raw | typed | typed / raw |" + (" typed, before | before / raw |" if before else ""))
print("|---|---|---|---|" + ("---|---|" if before else ""))
for raw, typed, key in [("rr", "typed-rr", "ops_per_s"), ("rr", "typed-rr", "p50_us"), ("rr", "typed-rr", "p99_us"),
                        ("rr", "typed-rr-binary", "ops_per_s"), ("rr", "typed-rr-binary", "p50_us"),
                        ("stream", "typed-stream", "msgs_per_s"), ("stream", "typed-stream-binary", "msgs_per_s")]:
    a, b = median(raw, key), median(typed, key)
    line = f"| {typed} {key} | {a:,.1f} | {b:,.1f} | {b / a:.2f} |"
    if before:
        c = median(typed, key, "socketipc-before")
        line += f" {c:,.1f} | {c / a:.2f} |"
    print(line)
PY
