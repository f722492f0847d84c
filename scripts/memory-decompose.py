#!/usr/bin/env python3
"""Where a parked subscriber's memory goes, in stages of one parlor server.

    scripts/memory-decompose.py URL METRICS_URL SERVER_PID N [OUT_PREFIX]

Against a fresh server (started as scripts/compare-nchan.sh starts it), with
the shape of `parlor-bench compare`'s memory row, one stage at a time:
  start     nothing yet
  joined    N users joined (password, into the lobby) and caught up on the
            presence of later joiners (as compare does, then once more, so
            that every mailbox is trimmed), over one connection
  conns     N more connections opened, no request on them
  parked    a /poll parked on each of them (its first request)
  cycled    one lobby message wakes all N; each reads its answer and parks
            its next poll on the same connection
After each stage (once RSS is steady: jemalloc's background thread purges
what the stage freed gradually) it
reads the server's VmRSS, RssAnon and, when the binary has the symbol,
glibc malloc's bytes in use through gdb (`malloc_stats()`, printed to the
server's stderr, given as OUT_PREFIX.stderr): SQLite allocates there, Rust
code in jemalloc, whose build has no statistics (config.stats false).
Prints one table: KiB per subscriber of each stage's growth.
"""

import http.client
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
import urllib.parse
from collections import defaultdict


def rss(pid):
    fields = {}
    for line in open("/proc/%s/status" % pid):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def glibc_heap(pid, stderr_path):
    """glibc malloc's bytes in use (SQLite's page caches and statements:
    rusqlite's bundled SQLite calls libc's malloc, while Rust's allocations
    go to jemalloc under its `_rjem_` prefix), from `malloc_stats()` called
    through gdb, which prints to the server's stderr."""
    if not stderr_path:
        return None
    size_before = os.path.getsize(stderr_path)
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx",
                    "-ex", "call (void)malloc_stats()"], capture_output=True, text=True)
    time.sleep(0.3)
    with open(stderr_path) as f:
        f.seek(size_before)
        text = f.read()
    at = text.find("Total (incl. mmap):")
    if at < 0:
        return None
    values = {}
    for line in text[at:].splitlines()[1:3]:
        key, _, value = line.partition("=")
        values[key.strip()] = int(value)
    return values.get("in use bytes")


def request(conn, method, path, body=None):
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    conn.request(method, path, body=body, headers=headers)
    answer = conn.getresponse()
    data = answer.read()
    if answer.status != 200:
        raise RuntimeError("%s %s: %d %s" % (method, path, answer.status, data[:200]))
    return json.loads(data) if data else None


def parked(metrics):
    host, port = metrics
    conn = http.client.HTTPConnection(host, port)
    conn.request("GET", "/metrics")
    for line in conn.getresponse().read().decode().splitlines():
        if line.startswith("parlor_parked_polls "):
            return int(float(line.split()[1]))
    return 0


def wait_parked(metrics, n, socks, users, limit=120):
    """Until all n polls are parked. A poll answered meanwhile (presence
    that became visible only after its catch-up: with SQLite, events are
    visible once durable) is read and made again on its connection."""
    by_fd = {sock.fileno(): (sock, user) for sock, user in zip(socks, users)}
    waiting = select.poll()
    for sock in socks:
        waiting.register(sock, select.POLLIN)
    deadline = time.time() + limit
    while parked(metrics) < n:
        if time.time() > deadline:
            raise RuntimeError("only %d of %d parked" % (parked(metrics), n))
        for fd, _ in waiting.poll(200):
            sock, user = by_fd[fd]
            user[1] = read_answer(sock)["cursor"]
            park(sock, user)


def park(sock, user):
    sock.sendall(("GET /poll?token=%s&cursor=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                  % (user[0], user[1])).encode())


def read_answer(sock):
    """One HTTP/1.1 answer with Content-Length; its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return json.loads(body[:length])


def main():
    url, metrics_url, pid, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    prefix = sys.argv[5] if len(sys.argv) > 5 else None
    stderr_path = prefix + ".stderr" if prefix else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname, parsed.port
    m = urllib.parse.urlparse(metrics_url)
    metrics = (m.hostname, m.port)
    stages = []

    recording = []

    def record(stage):
        """MEM_PERF=1: every allocation and sized free of the server while
        `stage` runs, with its call stack, into OUT_PREFIX.STAGE.data for
        scripts/alloc-sites.py. Needs uprobes on jemalloc's entry points,
        set up once per binary, e.g.
        perf probe -x target/release/parlor '_rjem_malloc size=%di:u64'
        (and _rjem_mallocx, _rjem_calloc n=%di:u64 size=%si:u64,
        _rjem_rallocx / _rjem_realloc / _rjem_sdallocx size=%si:u64)."""
        if not os.environ.get("MEM_PERF") or not prefix:
            return
        recording.append(subprocess.Popen(
            ["taskset", "-c", "1", "perf", "record", "-q", "-e", "probe_parlor:*",
             "--call-graph", "dwarf,8192", "-p", str(pid), "-o", "%s.%s.data" % (prefix, stage)],
            stderr=subprocess.DEVNULL))
        time.sleep(1)

    def stop_record():
        while recording:
            rec = recording.pop()
            rec.send_signal(2)
            rec.wait()

    def snapshot(name):
        # Until jemalloc has purged what the stage freed (its decay is
        # gradual): RSS steady within 64 KiB over 2 s, 30 s at most.
        time.sleep(2)
        last = rss(pid)["VmRSS"]
        for _ in range(15):
            time.sleep(2)
            now = rss(pid)["VmRSS"]
            if abs(now - last) < 64:
                break
            last = now
        stop_record()
        stages.append((name, rss(pid), glibc_heap(pid, stderr_path)))
        print("stage %-7s RSS %s" % (name, stages[-1][1]), file=sys.stderr)

    snapshot("start")
    conn = http.client.HTTPConnection(host, port)
    run = "%x" % (time.time_ns() & 0xFFFFFFFF)
    users = []
    for i in range(n):
        joined = request(conn, "POST", "/join", "name=mem-%s-%d&password=mem-pw-%d" % (run, i, i))
        users.append([joined["token"], joined["cursor"]])
    # Twice: with SQLite an event is visible only once durable, so a first
    # pass may stop short of presence committed meanwhile; the second
    # acknowledges everything, and the mailboxes are trimmed.
    for _ in range(2):
        for user in users:
            while True:
                polled = request(conn, "GET", "/poll?token=%s&cursor=%d&timeout=0"
                                 % (user[0], user[1]))
                if polled["cursor"] == user[1]:
                    break
                user[1] = polled["cursor"]
        time.sleep(1)
    snapshot("joined")
    if os.environ.get("MEM_IDLE"):
        # MEM_IDLE=SECONDS: a stage of doing nothing, to tell what frees
        # itself with time from what the next stages free.
        time.sleep(float(os.environ["MEM_IDLE"]))
        snapshot("idle")
    record("conns")
    socks = [socket.create_connection((host, port)) for _ in range(n)]
    snapshot("conns")
    record("parked")
    for sock, user in zip(socks, users):
        park(sock, user)
    wait_parked(metrics, n, socks, users)
    snapshot("parked")
    record("cycled")
    text = "mem-" + "x" * 60
    request(conn, "POST", "/send", "token=%s&conversation=lobby&client_msg_id=%s.0&text=%s"
            % (users[0][0], run, text))
    for sock, user in zip(socks, users):
        answer = read_answer(sock)
        user[1] = answer["cursor"]
        park(sock, user)
    wait_parked(metrics, n, socks, users)
    snapshot("cycled")

    print("%d subscribers; growth of each stage over the one before, KiB per subscriber" % n)
    print("%-8s %9s %9s %9s %12s" % ("stage", "VmRSS", "RssAnon", "RssFile",
                                     "glibc in use"))
    for (name, r, je), (_, r0, je0) in zip(stages[1:], stages[:-1]):
        line = "%-8s %9.2f %9.2f %9.2f" % (name, (r["VmRSS"] - r0["VmRSS"]) / n,
                                           (r["RssAnon"] - r0["RssAnon"]) / n,
                                           (r["RssFile"] - r0["RssFile"]) / n)
        if je is not None and je0 is not None:
            line += " %12.2f" % ((je - je0) / 1024 / n)
        print(line)
    first, last = stages[0], stages[-1]
    print("%-8s %9.2f %9.2f %9.2f" % ("total", (last[1]["VmRSS"] - first[1]["VmRSS"]) / n,
                                      (last[1]["RssAnon"] - first[1]["RssAnon"]) / n,
                                      (last[1]["RssFile"] - first[1]["RssFile"]) / n))
    print("absolute VmRSS KiB: " + ", ".join("%s %d" % (s[0], s[1]["VmRSS"]) for s in stages))
    print("absolute glibc heap in use (KiB): " + ", ".join(
        "%s %s" % (s[0], "?" if s[2] is None else s[2] // 1024) for s in stages))
    sockstat = open("/proc/net/sockstat").read().split("\n")[1]
    print("kernel, after the last stage (/proc/net/sockstat, not in RSS): " + sockstat)

if __name__ == "__main__":
    main()
