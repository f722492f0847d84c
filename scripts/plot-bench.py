#!/usr/bin/env python3
"""Plot parlor-bench --json results.

Reads any number of parlor-bench JSON files (latency and fanout runs are
plotted; other scenarios are ignored) and writes one PNG with two panels:

  left:  wake latency p50 and p99 and the /healthz floor p50 against the
         number of other polls parked, with the wake/floor ratio annotated;
  right: fan-out time (until the last poller has the message, p50 with the
         p90 as error bar) against the room size.

Each file's directory names its series (scripts/bench-suite.sh writes
results/sqlite/*.json and results/ephemeral/*.json), so both stores share
the axes.

Usage:
    scripts/plot-bench.py -o docs/bench.png results/sqlite/*.json results/ephemeral/*.json

Needs matplotlib (pip install matplotlib).
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            text = f.read().strip()
        if not text:
            print(f"skipping empty {path}", file=sys.stderr)
            continue
        run = json.loads(text)
        run["series"] = os.path.basename(os.path.dirname(os.path.abspath(path)))
        runs.append(run)
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="parlor-bench --json outputs")
    parser.add_argument("-o", "--output", default="docs/bench.png")
    parser.add_argument("--title", default="parlor, server on one core (taskset), loopback")
    args = parser.parse_args()

    runs = load(args.files)
    latency = sorted(
        (r for r in runs if r.get("scenario") == "latency" and r.get("wake_us")),
        key=lambda r: r["parked_others"],
    )
    fanout = sorted(
        (r for r in runs if r.get("scenario") == "fanout" and r.get("last_ms")),
        key=lambda r: r["clients"],
    )
    if not latency and not fanout:
        sys.exit("no latency or fanout results in the given files")

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    fig.suptitle(args.title)

    series = sorted({r["series"] for r in runs})
    markers = ["o", "s", "^", "D"]
    if latency:
        for i, name in enumerate(series):
            mine = [r for r in latency if r["series"] == name]
            if not mine:
                continue
            parked = [r["parked_others"] for r in mine]
            m = markers[i % len(markers)]
            left.plot(parked, [r["wake_us"]["p50"] for r in mine], m + "-", label=f"{name}: wake p50")
            left.plot(parked, [r["wake_us"]["p99"] for r in mine], m + ":", label=f"{name}: wake p99")
            left.plot(parked, [r["floor_us"]["p50"] for r in mine], m + "--", color="gray", label=f"{name}: floor p50")
            for x, r in zip(parked, mine):
                left.annotate(
                    f'{r["ratio_p50"]:.2f}×',
                    (x, r["wake_us"]["p50"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
        left.set_xlabel("other polls parked")
        left.set_ylabel("µs")
        left.set_title("wake latency: /send → parked poll has its answer\n(annotated: p50 / floor p50)")
        # Log scale: the stores differ by orders of magnitude at 5 000.
        left.set_yscale("log")
        left.grid(alpha=0.3)
        left.legend(fontsize=7)

    if fanout:
        for i, name in enumerate(series):
            mine = [r for r in fanout if r["series"] == name]
            if not mine:
                continue
            sizes = [r["clients"] for r in mine]
            p50 = [r["last_ms"]["p50"] for r in mine]
            p90 = [r["last_ms"]["p90"] for r in mine]
            errors = [[0] * len(p50), [b - a for a, b in zip(p50, p90)]]
            m = markers[i % len(markers)]
            right.errorbar(sizes, p50, yerr=errors, fmt=m + "-", capsize=4, label=f"{name}: last poller p50 (bar: p90)")
            right.plot(sizes, [r["first_ms"]["p50"] for r in mine], m + "--", label=f"{name}: first poller p50")
        right.set_xlabel("polls parked in the room")
        right.set_ylabel("ms")
        right.set_title("fan-out: one message until the last poller has it")
        right.set_yscale("log")
        right.grid(alpha=0.3)
        right.legend(fontsize=7)

    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
