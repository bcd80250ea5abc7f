#!/usr/bin/env python3
"""What idle connections hold on the heap, by the function that allocated it, per connection.

Input: the leaked-bytes stacks heaptrack writes for a server killed while its idle connections were open:

    heaptrack -o run .build/release/socketipc-bench server --socket S --workload idle-mem &
    .build/release/socketipc-bench client --socket S --workload idle-mem --conns 2000 &   # wait for "ready"
    kill -KILL <the server>
    heaptrack_print -f run.zst --flamegraph-cost-type leaked -F stacks.txt

    Benchmarks/tools/heap-sites.py --conns 2000 stacks.txt [stacks-of-another-build.txt]

With one file, prints the bytes per connection of the sites holding the most; with two, the sites whose bytes
changed most from the first to the second. Bytes are those requested (malloc's own overhead is not counted). Each
allocation is charged to the innermost frame that is not an allocator or the Swift runtime.
"""
import argparse
import collections
import re

RUNTIME = re.compile(
    r"^(swift_slowAlloc|swift_allocObject|swift_allocBox|swift_task_alloc|malloc|calloc|realloc|posix_memalign|"
    r"aligned_alloc|operator new|__libc|swift::|_swift|0x|\$ss|\$s7NIOCore14CircularBuffer|"
    r"\$s7NIOCore20MarkedCircularBuffer)"
)


def sites(path):
    """Leaked bytes by allocating site."""
    totals = collections.Counter()
    with open(path) as lines:
        for line in lines:
            line = line.rstrip()
            if not line:
                continue
            stack, cost = line.rsplit(" ", 1)
            frames = [frame.split(" (")[0] for frame in stack.rstrip(";").split(";")]
            site = next((frame for frame in reversed(frames) if frame and not RUNTIME.match(frame)), "?")
            totals[site[:120]] += int(cost)
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, required=True, help="idle connections the server held")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("stacks", nargs="+", help="one or two heaptrack flame-graph files of leaked bytes")
    arguments = parser.parse_args()
    per = float(arguments.conns)
    first = sites(arguments.stacks[0])
    if len(arguments.stacks) == 1:
        print("all: %.1f bytes per connection" % (sum(first.values()) / per))
        for site, cost in first.most_common(arguments.top):
            print("%8.1f  %s" % (cost / per, site))
        return
    second = sites(arguments.stacks[1])
    print("all: %.1f -> %.1f bytes per connection" % (sum(first.values()) / per, sum(second.values()) / per))
    changed = sorted(set(first) | set(second), key=lambda site: -abs(second[site] - first[site]))
    for site in changed[: arguments.top]:
        print("%8.1f %8.1f %+8.1f  %s" % (first[site] / per, second[site] / per, (second[site] - first[site]) / per, site))


if __name__ == "__main__":
    main()
