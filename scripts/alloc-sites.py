#!/usr/bin/env python3
"""Allocations of one stage of scripts/memory-decompose.py, by call site.

    scripts/alloc-sites.py PERF_DATA N

PERF_DATA holds uprobe events on jemalloc's entry points (`_rjem_malloc`,
`_rjem_mallocx`, `_rjem_calloc`, `_rjem_rallocx`, `_rjem_realloc` with the
size asked for; `_rjem_sdallocx`, Rust's sized free, with the size freed),
with dwarf call stacks. Prints, per subscriber (N): bytes allocated and
freed, the net by size, and the call sites of the bytes allocated (the
first frame that is not the allocator or a generic collection).
"""

import re
import subprocess
import sys
from collections import defaultdict

WRAPPERS = re.compile(
    r"^(_rjem_|__rust_|__rdl_|_?ZN|alloc::|core::|std::|<alloc::|<core::|<std::|hashbrown::|"
    r"<hashbrown::|bytes::|<bytes::|tikv_jemallocator|<tikv_jemallocator|\[unknown\]|"
    r"smallvec::|<smallvec::|serde_json::ser|<serde_json::ser|__memcpy|memcpy)")


def main():
    data, n = sys.argv[1], int(sys.argv[2])
    text = subprocess.run(["perf", "script", "-i", data, "-F", "event,trace,ip,sym"],
                          capture_output=True, text=True).stdout
    alloc_bytes = defaultdict(int)
    alloc_count = defaultdict(int)
    freed = defaultdict(int)
    net_by_size = defaultdict(int)
    sites = defaultdict(lambda: [0, 0])
    event = None
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        head = lines[0]
        match = re.search(r"probe_parlor:(\w+):.*?size=(\d+)(?:.*?size=(\d+))?", head)
        if not match:
            continue
        event, size = match.group(1), int(match.group(2))
        if event.startswith("_rjem_calloc"):
            nums = re.findall(r"(?:n|size)=(\d+)", head)
            size = int(nums[0]) * int(nums[1]) if len(nums) == 2 else size
        frames = []
        for line in lines[1:]:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1].split(" (")[0]))
        if "sdallocx" in event:
            freed[event] += size
            net_by_size[size] -= size
            continue
        alloc_bytes[event] += size
        alloc_count[event] += 1
        net_by_size[size] += size
        site = [f for f in frames if not WRAPPERS.match(f)][:2]
        key = " <- ".join(s[:110] for s in site) or "?"
        sites[key][0] += 1
        sites[key][1] += size
    print("per subscriber (N = %d):" % n)
    for event in sorted(alloc_bytes):
        print("  %-16s %8.2f calls %10.1f bytes asked" % (event, alloc_count[event] / n,
                                                         alloc_bytes[event] / n))
    for event in sorted(freed):
        print("  %-16s %21.1f bytes freed" % (event, freed[event] / n))
    total = sum(alloc_bytes.values()) - sum(freed.values())
    print("  net (asked - freed; reallocations count their new size only): %.1f bytes" % (total / n))
    print()
    print("net bytes per subscriber by size asked (|net| >= 8 B):")
    for size in sorted(net_by_size):
        if abs(net_by_size[size]) / n >= 8:
            print("  %7d B  %9.1f" % (size, net_by_size[size] / n))
    print()
    print("allocation sites by bytes asked per subscriber (top 25; calls, bytes):")
    for key, (count, size) in sorted(sites.items(), key=lambda kv: -kv[1][1])[:25]:
        print("  %6.2f %9.1f  %s" % (count / n, size / n, key))


if __name__ == "__main__":
    main()
