#!/usr/bin/env python3
"""Redis memory per online user in cluster mode.

Starts nothing: run a scratch redis-server and one parlor node on it first, e.g.
  redis-server --port 16395 --save "" --appendonly no &
  parlor --listen 127.0.0.1:18095 --redis redis://127.0.0.1:16395/0 \
      --argon2-memory-kib 8 --argon2-iterations 1 --signups-per-ip 0 --inactivity-timeout 10m &
  scripts/cluster-memory.py 16395 18095 500
Joins N users (one client each), drains every mailbox, and prints Redis's
used_memory per user and MEMORY USAGE of one user's keys. Never point it at
a Redis that holds anything else.
"""
import http.client
import json
import subprocess
import sys
import urllib.parse

redis_port, parlor_port, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def redis(*args):
    return subprocess.run(["redis-cli", "-p", redis_port, *args],
                          capture_output=True, text=True).stdout.strip()


def used_memory():
    line = [l for l in redis("info", "memory").splitlines() if l.startswith("used_memory:")][0]
    return int(line.split(":")[1])


def call(method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", parlor_port)
    conn.request(method, path, body, {"content-type": "application/x-www-form-urlencoded"})
    return json.loads(conn.getresponse().read())


base = used_memory()
clients = []
for i in range(users):
    joined = call("POST", "/join", urllib.parse.urlencode({"name": f"user{i}", "password": "pw"}))
    clients.append([joined["token"], joined["cursor"]])
after_join = used_memory()
for client in clients:
    while True:
        query = urllib.parse.urlencode({"token": client[0], "cursor": client[1], "timeout": 0})
        answer = call("GET", "/poll?" + query)
        if not answer["events"]:
            break
        client[1] = answer["cursor"]
after_drain = used_memory()
print(f"{users} online users: used_memory per user {(after_join - base) / users:.0f} B after "
      f"/join, {(after_drain - base) / users:.0f} B with every mailbox drained")
for key in ["acct:{user1}", "mmeta:{user1}", "clients:{user1}", "acks:{user1}"]:
    print(f"parlor:{key}", redis("memory", "usage", f"parlor:{key}"), "B")
token = redis("--scan", "--pattern", "parlor:tok:*").splitlines()[0]
print("parlor:tok:{...}", redis("memory", "usage", token), "B")
for key in ["deadlines", "online", "pboard", "pchanges", "mseen"]:
    print(f"parlor:{key} (all users)", redis("memory", "usage", f"parlor:{key}", "samples", "0"), "B")
