#!/usr/bin/env python3
"""A join storm: USERS users join one parlor as fast as THREADS kept-alive
connections allow, each with a JWT from the application's backend (as a
storm after a deploy or an outage would: no argon2 per join), and none of
them polls. Prints the wall time, the server's CPU time and RSS growth
(from /proc/PID), and the bytes of /join answers (each lists the first 200
users online, so the total grows with USERS; servers before 2026-12-08
listed everyone, and the total grew with the square of USERS).

The server needs the same secret and an inactivity timeout longer than the
storm, e.g.:
  target/release/parlor --data-dir "$(mktemp -d)" --join-secret "$SECRET" \
      --inactivity-timeout 1h --max-connections-per-ip 0 &
  scripts/join-storm.py http://127.0.0.1:8080 20000 "$SECRET" PID [THREADS]

Standard library only.
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret: bytes, name: str) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": name, "exp": int(time.time()) + 3600}).encode())
    signed = f"{header}.{claims}".encode()
    return f"{header}.{claims}.{b64url(hmac.new(secret, signed, hashlib.sha256).digest())}"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    url, users, secret, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    target = urllib.parse.urlsplit(url)
    names = [f"storm{i}" for i in range(users)]
    tokens = [mint(secret, name) for name in names]
    failures, answer_bytes, lock = [], [0], threading.Lock()

    def join_share(share: range) -> None:
        connection = http.client.HTTPConnection(target.hostname, target.port)
        received = 0
        for i in share:
            body = urllib.parse.urlencode({"auth": tokens[i]})
            connection.request("POST", "/join", body,
                               {"Content-Type": "application/x-www-form-urlencoded"})
            answer = connection.getresponse()
            data = answer.read()
            received += len(data)
            if answer.status != 200:
                with lock:
                    failures.append((names[i], answer.status, data[:200]))
        with lock:
            answer_bytes[0] += received

    cpu_before, rss_before = cpu_seconds(pid), rss_kib(pid)
    started = time.monotonic()
    workers = [threading.Thread(target=join_share, args=(range(t, users, threads),))
               for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.monotonic() - started
    time.sleep(2)  # jemalloc's background purge settles RSS
    print(json.dumps({
        "users": users,
        "threads": threads,
        "wall_s": round(wall, 2),
        "joins_per_s": round(users / wall),
        "server_cpu_s": round(cpu_seconds(pid) - cpu_before, 2),
        "server_rss_growth_mib": round((rss_kib(pid) - rss_before) / 1024, 1),
        "server_rss_kib_per_user": round((rss_kib(pid) - rss_before) / users, 1),
        "join_answer_mib": round(answer_bytes[0] / 2**20, 1),
        "failures": len(failures),
        "first_failures": [(n, s, d.decode(errors="replace")) for n, s, d in failures[:3]],
    }))


if __name__ == "__main__":
    main()
