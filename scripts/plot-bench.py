#!/usr/bin/env python3
"""Plot parlor-bench --json results.

Reads any number of parlor-bench JSON files (latency and fanout runs are
plotted; other scenarios are ignored) and writes one PNG with two panels:

  left:  wake latency p50/p90/p99 and the /healthz floor p50 against the
         number of other polls parked, with the wake/floor ratio annotated;
  right: fan-out time (until the last poller has the message, p50 with the
         p90 as error bar) against the room size, with the floor multiple.

Usage:
    scripts/plot-bench.py -o docs/bench.png results/*.json

Needs matplotlib (pip install matplotlib).
"""

import argparse
import json
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
        runs.append(json.loads(text))
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

    if latency:
        parked = [r["parked_others"] for r in latency]
        for key, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            left.plot(parked, [r["wake_us"][key] for r in latency], style, label=f"wake {key}")
        floor = [r["floor_us"]["p50"] for r in latency]
        left.plot(parked, floor, "k.-", label="floor p50 (GET /healthz)")
        for x, r in zip(parked, latency):
            left.annotate(
                f'{r["ratio_p50"]:.2f}× floor',
                (x, r["wake_us"]["p50"]),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=8,
            )
        left.set_xlabel("other polls parked")
        left.set_ylabel("µs")
        left.set_title("wake latency: /send → parked poll has its answer")
        left.set_ylim(bottom=0)
        left.grid(alpha=0.3)
        left.legend(fontsize=8)

    if fanout:
        sizes = [r["clients"] for r in fanout]
        p50 = [r["last_ms"]["p50"] for r in fanout]
        p90 = [r["last_ms"]["p90"] for r in fanout]
        errors = [[0] * len(p50), [b - a for a, b in zip(p50, p90)]]
        right.errorbar(sizes, p50, yerr=errors, fmt="o-", capsize=4, label="last poller, p50 (bar: p90)")
        right.plot(sizes, [r["first_ms"]["p50"] for r in fanout], "s--", label="first poller, p50")
        for x, r in zip(sizes, fanout):
            if r.get("last_p50_in_floors"):
                right.annotate(
                    f'{r["last_p50_in_floors"]:.0f} floors',
                    (x, r["last_ms"]["p50"]),
                    textcoords="offset points",
                    xytext=(4, -12),
                    fontsize=8,
                )
        right.set_xlabel("polls parked in the room")
        right.set_ylabel("ms")
        right.set_title("fan-out: one message until the last poller has it")
        right.set_ylim(bottom=0)
        right.grid(alpha=0.3)
        right.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
