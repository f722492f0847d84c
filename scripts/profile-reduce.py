#!/usr/bin/env python3
"""Reduces the raw output of scripts/profile-issue17.sh to small text files.

    scripts/profile-reduce.py RAW_DIR OUT_DIR

For each SERVER/PHASE of RAW_DIR it writes OUT_DIR/SERVER/PHASE.txt: the
server's counter deltas (parlor's /metrics, Nchan's stub status), CPU time
by thread, and whichever of these the phase has: the perf profile (split by
component, top symbols flat and with children), the perf trace syscall
summary, the perf sched summary of CPU 0. OUT_DIR/summary.txt has one line
per SERVER/PHASE/TOOL: server CPU, messages, poll answers, and CPU and
syscalls per message.
"""

import os
import re
import subprocess
import sys
from collections import defaultdict

# Leading crate of a demangled Rust symbol -> component.
COMPONENTS = [
    ("parlor", "parlor"),
    ("hyper", "hyper+http"),
    ("http", "hyper+http"),
    ("httparse", "hyper+http"),
    ("h2", "hyper+http"),
    ("tokio", "tokio+mio"),
    ("mio", "tokio+mio"),
    ("rusqlite", "sqlite"),
    ("libsqlite3_sys", "sqlite"),
    ("serde_json", "serde_json"),
    ("serde", "serde_json"),
    ("tikv_jemallocator", "jemalloc"),
    ("tracing", "tracing"),
    ("tracing_core", "tracing"),
    ("tracing_subscriber", "tracing"),
    ("nu_ansi_term", "tracing"),
    ("sharded_slab", "tracing"),
    ("atomic_waker", "tokio+mio"),
    ("jsonwebtoken", "other crates"),
]
GENERIC = {"core", "alloc", "std", "hashbrown", "bytes", "smallvec", "futures_util",
           "futures_core", "pin_project_lite", "indexmap"}


def crate_of(symbol):
    """The first non-generic crate named in a demangled symbol: the first
    segment of each path in it (`core::ptr::drop_in_place<parlor::X>` is
    parlor's; `<tokio::Y as hyper::Z>::f` tokio's)."""
    first = None
    for name in re.findall(r"(?:^|[<\s(&*,\[])([A-Za-z_][A-Za-z0-9_]*)::", symbol):
        if name == "__rustc":
            name = "std"
        first = first or name
        if name not in GENERIC:
            return name
    return first


def component(dso, symbol):
    if symbol.startswith("[k] ") or dso.startswith("[kernel"):
        return "kernel"
    name = symbol[4:] if symbol[:4] in ("[.] ", "[k] ") else symbol
    if dso.startswith("libc") or dso.startswith("ld-linux"):
        return "libc (memcpy, ...)"
    if name.startswith("_rjem_") or name.startswith("je_") or name.startswith("_rjem"):
        return "jemalloc"
    if "::" not in name:
        if dso in ("parlor",) and not name.startswith("0x"):
            return "sqlite"  # the only C in the binary besides jemalloc
        if dso.startswith("nginx"):
            return "nginx"
        if "nchan" in dso:
            return "nchan"
        return dso
    crate = crate_of(name)
    for prefix, comp in COMPONENTS:
        if crate == prefix:
            return comp
    if crate in GENERIC or crate is None:
        return "std/core (fmt, hash, collections)"
    return "other crates"


def perf_report(data, *args):
    result = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-header", *args],
                            capture_output=True, text=True)
    return result.stdout


def perf_text(data):
    out = []
    flat = perf_report(data, "--no-children", "--sort", "dso,sym", "-g", "none",
                       "--percent-limit", "0")
    rows = []
    for line in flat.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\[[k.]\] .*)$", line)
        if match:
            rows.append((float(match.group(1)), match.group(2), match.group(3).rstrip()))
    split = defaultdict(float)
    for pct, dso, sym in rows:
        split[component(dso, sym)] += pct
    count = re.search(r"Samples: (\S+)\s+of event 'cpu-clock", subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "--sort", "dso", "-g", "none"],
        capture_output=True, text=True).stdout)
    out.append("perf samples (cpu-clock, 999 Hz): %s" % (count.group(1) if count else "?"))
    out.append("")
    out.append("self time by component (%):")
    for comp, pct in sorted(split.items(), key=lambda kv: -kv[1]):
        out.append("  %6.2f  %s" % (pct, comp))
    out.append("")
    out.append("top 40 symbols, self (%, dso, symbol):")
    for pct, dso, sym in rows[:40]:
        out.append("  %6.2f  %-10s %s" % (pct, dso[:10], sym[:150]))
    children = perf_report(data, "--children", "--sort", "sym", "-g", "none",
                           "--percent-limit", "2")
    out.append("")
    out.append("with children (dwarf unwinding; %children %self symbol), >= 2 %:")
    for line in children.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+(.*)$", line)
        if match:
            out.append("  %6s %6s  %s" % (match.group(1), match.group(2), match.group(3)[:150]))
    return "\n".join(out), dict(split)


def callgrind_rows(path, inclusive):
    result = subprocess.run(["callgrind_annotate", "--threshold=100",
                             "--inclusive=" + ("yes" if inclusive else "no"), path],
                            capture_output=True, text=True)
    rows, total = [], None
    for line in result.stdout.splitlines():
        match = re.match(r"\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S.*)$", line)
        if not match:
            continue
        count = int(match.group(1).replace(",", ""))
        rest = match.group(2)
        if rest.startswith("PROGRAM TOTALS"):
            total = count
        elif ":" in rest and not rest.startswith("Ir"):
            rows.append((count, rest))
    return rows, total


def callgrind_text(path, messages, answers):
    rows, total = callgrind_rows(path, False)
    split = defaultdict(float)
    for count, rest in rows:
        # "file:function [object]"
        obj = re.search(r"\[([^\]]*)\]\s*$", rest)
        obj = os.path.basename(obj.group(1)) if obj else ""
        name = re.sub(r"\s*\[[^\]]*\]\s*$", "", rest)
        name = name.split(":", 1)[1] if ":" in name and not name.startswith("<") else name
        if obj.startswith("libc") or obj.startswith("ld-linux"):
            comp = "libc (memcpy, ...)"
        elif obj.startswith("vgpreload") or obj.startswith("valgrind"):
            comp = "valgrind"
        else:
            comp = component("parlor", "[.] " + name)
        split[comp] += count
    total = total or sum(c for c, _ in rows)
    out = ["callgrind: %s instructions (user space only; the kernel is not counted)" % format(total, ",")]
    if messages:
        out.append("instructions per message: %s" % format(int(total / messages), ","))
    if answers:
        out.append("instructions per poll answered: %s" % format(int(total / answers), ","))
    out += ["", "instructions by component (self):"]
    for comp, count in sorted(split.items(), key=lambda kv: -kv[1]):
        extra = ""
        if messages:
            extra = "  %s per message" % format(int(count / messages), ",")
        out.append("  %5.1f%%  %-22s%s" % (100 * count / total, comp, extra))
    out += ["", "top 30 functions, self (Ir):"]
    for count, rest in rows[:30]:
        out.append("  %14s  %s" % (format(count, ","), rest[:160]))
    inc, _ = callgrind_rows(path, True)
    out += ["", "top 40 functions, inclusive (Ir):"]
    for count, rest in inc[:40]:
        out.append("  %14s  %s" % (format(count, ","), rest[:160]))
    return "\n".join(out), {k: 100 * v / total for k, v in split.items()}, total


def metrics(path):
    values = {}
    if not os.path.exists(path):
        return values
    for line in open(path):
        if line.startswith("#"):
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) != 2:
            # Nchan stub status: "name: value"
            if ":" in line:
                key, value = line.split(":", 1)
                try:
                    values[key.strip()] = float(value)
                except ValueError:
                    pass
            continue
        key, value = parts
        try:
            values[key.strip().rstrip(":")] = float(value)
        except ValueError:
            if ":" in line:
                key, value = line.split(":", 1)
                try:
                    values[key.strip()] = float(value)
                except ValueError:
                    pass
    return values


def threads(path):
    ticks = {}
    if os.path.exists(path):
        for line in open(path):
            tid, name, t = line.rstrip("\n").split("\t")
            ticks[tid] = (name, int(t))
    return ticks


def seconds(path):
    return float(open(path).read()) if os.path.exists(path) else None


def reduce_phase(phase_dir, server, phase):
    before = metrics(os.path.join(phase_dir, "counters.before"))
    after = metrics(os.path.join(phase_dir, "counters.after"))
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    t0, t1 = threads(os.path.join(phase_dir, "threads.before")), threads(os.path.join(phase_dir, "threads.after"))
    by_thread = defaultdict(float)
    for tid, (name, t) in t1.items():
        by_thread[name] += (t - t0.get(tid, (name, 0))[1]) / 100.0
    cpu = sum(by_thread.values())
    wall = (seconds(os.path.join(phase_dir, "end")) or 0) - (seconds(os.path.join(phase_dir, "start")) or 0)
    if server == "nchan":
        messages = delta.get("total published messages", 0)
        answers = None
    else:
        messages = delta.get("parlor_messages_total", 0)
        answers = sum(v for k, v in delta.items() if k.startswith("parlor_poll_answers_total"))
    lines = ["%s / %s: %.1f s wall, server CPU %.2f s" % (server, phase, wall, cpu),
             "messages published: %d%s" % (messages, "" if answers is None else ", polls answered: %d" % answers)]
    if messages:
        lines.append("server CPU per message: %.1f us" % (cpu / messages * 1e6))
    if answers:
        lines.append("server CPU per poll answered: %.1f us" % (cpu / answers * 1e6))
    lines.append("")
    lines.append("CPU seconds by thread (summed by name; ticks of 10 ms):")
    for name, s in sorted(by_thread.items(), key=lambda kv: -kv[1]):
        if s > 0:
            lines.append("  %7.2f  %s" % (s, name))
    lines.append("")
    lines.append("counter deltas:")
    for key in sorted(delta):
        lines.append("  %s %g" % (key, delta[key]))
    summary = {"server": server, "phase": phase, "wall": wall, "cpu": cpu,
               "messages": messages, "answers": answers}
    perf_data = os.path.join(phase_dir, "perf.data")
    if os.path.exists(perf_data):
        text, split = perf_text(perf_data)
        lines += ["", text]
        summary["split"] = split
    trace = os.path.join(phase_dir, "trace.txt")
    if os.path.exists(trace):
        text = open(trace).read()
        calls = 0
        per = defaultdict(int)
        for line in text.splitlines():
            match = re.match(r"\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s+[\d.]+", line)
            if match:
                per[match.group(1)] += int(match.group(2))
                calls += int(match.group(2))
        summary["syscalls"] = calls
        summary["per_syscall"] = dict(per)
        lines += ["", "syscalls, all threads (perf trace -s):"]
        for name, n in sorted(per.items(), key=lambda kv: -kv[1]):
            extra = ""
            if messages:
                extra = "  %.2f per message" % (n / messages)
            if answers:
                extra += ", %.2f per poll answered" % (n / answers)
            lines.append("  %-16s %9d%s" % (name, n, extra))
        lines += ["", "perf trace -s as printed:", text]
    grind = os.path.join(phase_dir, "callgrind.out")
    if os.path.exists(grind):
        text, split, total = callgrind_text(grind, messages, answers)
        lines += ["", text]
        summary["split"] = split
        summary["instructions"] = total
    sched = os.path.join(phase_dir, "sched.data")
    if os.path.exists(sched):
        result = subprocess.run(["perf", "sched", "timehist", "-i", sched, "-s", "--state"],
                                capture_output=True, text=True)
        summ = result.stdout
        at = summ.find("Runtime summary")
        lines += ["", "perf sched timehist -s (CPU 0, every task):", summ[at:] if at >= 0 else summ[-6000:]]
        hist = subprocess.run(["perf", "sched", "timehist", "-i", sched],
                              capture_output=True, text=True).stdout
        slices = []
        for line in hist.splitlines():
            parts = line.split()
            if len(parts) >= 6 and re.match(r"^\d+\.\d+$", parts[0]):
                try:
                    run = float(parts[-1])
                    wait = float(parts[-3])
                    delay = float(parts[-2])
                except ValueError:
                    continue
                slices.append((run, wait, delay, " ".join(parts[2:-3])))
        slices.sort(key=lambda s: -s[0])
        lines += ["", "longest 25 run slices on CPU 0 (run ms, wait ms, sch delay ms, task):"]
        for s in slices[:25]:
            lines.append("  %8.3f %8.3f %8.3f  %s" % s)
        delays = sorted((s for s in slices), key=lambda s: -s[2])
        lines += ["", "largest 25 scheduling delays on CPU 0 (run ms, wait ms, sch delay ms, task):"]
        for s in delays[:25]:
            lines.append("  %8.3f %8.3f %8.3f  %s" % s)
    return "\n".join(lines) + "\n", summary


def main():
    raw, out = sys.argv[1], sys.argv[2]
    tool = os.environ.get("TOOL_NAME", "")
    os.makedirs(out, exist_ok=True)
    summaries = []
    for server in sorted(os.listdir(raw)):
        sdir = os.path.join(raw, server)
        if not os.path.isdir(sdir) or server.startswith("nginx"):
            continue
        for phase in ["wake-chat", "wake-bench", "fanout", "tput-chat", "tput-bench"]:
            pdir = os.path.join(sdir, phase)
            if not os.path.isdir(pdir):
                continue
            text, summary = reduce_phase(pdir, server, phase)
            os.makedirs(os.path.join(out, server), exist_ok=True)
            name = os.path.join(out, server, "%s%s.txt" % (phase, "-" + tool if tool else ""))
            with open(name, "w") as f:
                f.write(text)
            summaries.append(summary)
    with open(os.path.join(out, "summary%s.txt" % ("-" + tool if tool else "")), "w") as f:
        for s in summaries:
            line = "%-9s %-10s wall %5.1f s  CPU %6.2f s  messages %7d" % (
                s["server"], s["phase"], s["wall"], s["cpu"], s["messages"])
            if s.get("answers") is not None:
                line += "  answers %7d" % s["answers"]
            if s["messages"]:
                line += "  CPU/message %7.1f us" % (s["cpu"] / s["messages"] * 1e6)
            if "instructions" in s and s["messages"]:
                line += "  instr/message %s" % format(int(s["instructions"] / s["messages"]), ",")
            if "syscalls" in s and s["messages"]:
                line += "  syscalls/message %6.1f" % (s["syscalls"] / s["messages"])
            if "split" in s:
                line += "  " + ", ".join("%s %.0f%%" % (k, v) for k, v in
                                        sorted(s["split"].items(), key=lambda kv: -kv[1])[:7])
            f.write(line + "\n")
    print(open(os.path.join(out, "summary%s.txt" % ("-" + tool if tool else ""))).read())


if __name__ == "__main__":
    main()
