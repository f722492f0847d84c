#!/usr/bin/env python3
"""The side-by-side table of scripts/compare-nchan.sh from its JSON files
(OUT_DIR/<server>-<round>.json, `parlor-bench compare` output): one column
per server, rounds joined with " / "."""
import json
import os
import sys

COLUMNS = [("nchan", "Nchan"), ("sqlite", "parlor default (SQLite)"), ("ephemeral", "parlor `--ephemeral`")]


def get(r, *path):
    for key in path:
        if r is None:
            return None
        r = r.get(key)
    return r


def fmt(value, spec):
    return "—" if value is None else format(value, spec)


def ratio(a, b):
    return None if a is None or not b else a / b


ROWS = [
    ("floor p50, nginx `return 200` (µs)", lambda r: fmt(get(r, "floors", "nginx", "p50_us"), ".0f")),
    ("floor p50, bare hyper service (µs)", lambda r: fmt(get(r, "floors", "hyper", "p50_us"), ".0f")),
    ("floor p50, the server's own (`/floor`, parlor `/healthz`) (µs)", lambda r: fmt(get(r, "floors", "own", "p50_us"), ".0f")),
    ("wake p50 / floor p50, sender polls (floor: nginx, paired)", lambda r: f'{fmt(get(r, "wake_sender_polls", "p50_over_floor"), ".2f")}× ({fmt(get(r, "wake_sender_polls", "p50_us"), ".0f")} µs)'),
    ("wake p99 / floor p50, sender polls", lambda r: f'{fmt(get(r, "wake_sender_polls", "p99_over_floor"), ".1f")}× ({fmt(get(r, "wake_sender_polls", "p99_us"), ".0f")} µs)'),
    ("wake p50 / floor p50, sender does not poll", lambda r: f'{fmt(get(r, "wake_sender_does_not_poll", "p50_over_floor"), ".2f")}×'),
    ("wake p99 / floor p50, sender does not poll", lambda r: f'{fmt(get(r, "wake_sender_does_not_poll", "p99_over_floor"), ".1f")}×'),
    ("wake p50 / own floor p50, sender does not poll (parlor-bench's shape)", lambda r: f'{fmt(ratio(get(r, "wake_sender_does_not_poll", "p50_us"), get(r, "floors", "own", "p50_us")), ".2f")}×'),
    ("fan-out to the crowd, last delivery (median of rounds, ms)", lambda r: fmt(get(r, "fanout", "last_median_ms"), ".1f")),
    ("throughput, senders poll: deliveries per server CPU-s", lambda r: fmt(get(r, "throughput_senders_poll", "per_server_cpu_s"), ",.0f")),
    ("throughput, senders do not poll: deliveries per server CPU-s", lambda r: fmt(get(r, "throughput_senders_do_not_poll", "per_server_cpu_s"), ",.0f")),
    ("memory per parked subscriber, with its user (KiB)", lambda r: fmt(get(r, "memory", "kib_per_subscriber_with_user"), ".1f")),
    ("memory per parked subscriber, poll only (KiB)", lambda r: fmt(get(r, "memory", "kib_per_subscriber_poll_only"), ".1f")),
    ("checks: delivered / lost / duplicated / errors", lambda r: check(r)),
]


def check(r):
    parts = [get(r, "check")] + [get(r, k, "check") for k in ("throughput_senders_poll", "throughput_senders_do_not_poll")]
    parts = [p for p in parts if p]
    if not parts:
        return "—"
    total = lambda key: sum(p.get(key, 0) for p in parts)
    return f'{total("delivered")} / {total("lost")} / {total("duplicated")} / {total("errors")}'


# parlor-bench's own scenarios (pb-<store>-<scenario>-<round>.json), parlor only.
PB_ROWS = [
    ("parlor-bench `latency`: wake p50 / its floor (`/healthz`) p50", "latency",
     lambda r: f'{fmt(get(r, "ratio_p50"), ".2f")}× ({fmt(get(r, "wake_us", "p50"), ".0f")} / {fmt(get(r, "floor_us", "p50"), ".0f")} µs)'),
    ("parlor-bench `latency`: wake p99 / its floor p50", "latency", lambda r: f'{fmt(get(r, "ratio_p99_to_floor_p50"), ".1f")}×'),
    ("parlor-bench `fanout`: last delivery p50 (ms)", "fanout", lambda r: fmt(get(r, "last_ms", "p50"), ".1f")),
    ("parlor-bench `fanout`: RSS per parked poll, user left out (KiB)", "fanout",
     lambda r: fmt(get(r, "setup", "server_rss_per_parked_poll_kib"), ".1f")),
    ("parlor-bench `fanout`: RSS per user and poll (KiB)", "fanout",
     lambda r: fmt(get(r, "setup", "server_rss_per_user_and_poll_kib"), ".1f")),
    ("parlor-bench `throughput`: deliveries per server CPU-s (senders do not poll)", "throughput",
     lambda r: fmt(get(r, "deliveries_per_server_cpu_s"), ",.0f")),
]


def main(paths):
    runs = {}
    pb = {}
    for path in sorted(paths):
        name = os.path.basename(path)[: -len(".json")]
        if name.startswith("pb-"):
            parts = name.split("-")
            try:
                pb.setdefault((parts[1], parts[2]), []).append(json.load(open(path)))
            except (OSError, ValueError) as error:
                print(f"{path}: {error}", file=sys.stderr)
            continue
        server = name.rsplit("-", 1)[0]
        try:
            runs.setdefault(server, []).append(json.load(open(path)))
        except (OSError, ValueError) as error:
            print(f"{path}: {error}", file=sys.stderr)
    crowd = next((get(r, "memory", "subscribers") for rs in runs.values() for r in rs), None)
    pairs = next((get(r, "throughput_senders_poll", "pairs") for rs in runs.values() for r in rs), None)
    print(f"| figure ({crowd} subscribers, {pairs} pairs) | " + " | ".join(name for _, name in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for label, cell in ROWS:
        cells = [" / ".join(cell(r) for r in runs.get(key, [])) or "—" for key, _ in COLUMNS]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for label, scenario, cell in PB_ROWS:
        cells = ["—" if key == "nchan" else " / ".join(cell(r) for r in pb.get((key, scenario), [])) or "—"
                 for key, _ in COLUMNS]
        if any(c != "—" for c in cells):
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
