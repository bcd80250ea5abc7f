#!/usr/bin/env python3
"""Markdown tables from Benchmarks/sweep.sh's JSON lines: one for one-way messages (time per message of the pipelined
`bulk` shape, in microseconds, and GiB/s), one for round trips (`rr` p50 and p99, in microseconds). Medians of the
repeated runs; each cell has its ratio to the baseline implementation (default c) when there is one.

    Benchmarks/tools/sweep-table.py FILE [--baseline IMPL]
"""
import json
import statistics
import sys
from collections import defaultdict


def size_name(size):
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def main():
    args = sys.argv[1:]
    baseline = "c"
    if "--baseline" in args:
        index = args.index("--baseline")
        baseline = args[index + 1]
        del args[index : index + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    runs = defaultdict(list)
    impls = []
    with open(args[0]) as lines:
        for line in lines:
            line = line.strip()
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if not record.get("sweep"):
                continue
            if record["impl"] not in impls:
                impls.append(record["impl"])
            runs[(record["workload"], record["size"], record["impl"])].append(record)
    sizes = sorted({size for (_, size, _) in runs})

    def median(shape, size, impl, key):
        values = [run[key] for run in runs.get((shape, size, impl), [])]
        return statistics.median(values) if values else None

    def table(title, shape, value, unit, lower_is_better):
        print(f"### {title}\n")
        print("| size | " + " | ".join(impls) + " |")
        print("|---|" + "---|" * len(impls))
        for size in sizes:
            cells = []
            base = value(shape, size, baseline)
            for impl in impls:
                figure = value(shape, size, impl)
                if figure is None:
                    cells.append("")
                    continue
                digits = 1 if figure >= 10 else 2 if figure >= 0.1 else 3
                cell = f"{figure:,.{digits}f} {unit}"
                if base and impl != baseline:
                    ratio = base / figure if lower_is_better else figure / base
                    cell += f" ({ratio:.2f}x)"
                cells.append(cell)
            print(f"| {size_name(size)} | " + " | ".join(cells) + " |")
        print()

    def per_message(shape, size, impl):
        rate = median(shape, size, impl, "msgs_per_s")
        return 1e6 / rate if rate else None

    table("One-way: time per message (pipelined `bulk` shape; ratio = speed against " + baseline + ")",
          "bulk", per_message, "µs", True)
    table("One-way: GiB/s", "bulk", lambda s, z, i: median(s, z, i, "gib_per_s"), "GiB/s", False)
    table("Round trip: p50", "rr", lambda s, z, i: median(s, z, i, "p50_us"), "µs", True)
    table("Round trip: p99", "rr", lambda s, z, i: median(s, z, i, "p99_us"), "µs", True)
    counts = sorted({len(v) for v in runs.values()})
    print(f"Runs per cell: {', '.join(map(str, counts))} (medians).")


if __name__ == "__main__":
    main()
