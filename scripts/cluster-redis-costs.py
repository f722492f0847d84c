#!/usr/bin/env python3
"""Redis's memory for messages and parked polls in cluster mode (Redis's
latency under a lobby message to thousands: scripts/cluster-lobby-latency.sh).

Starts nothing: run a scratch redis-server and a parlor node (or several)
on it first, e.g.
  redis-server --port 16396 --save "" --appendonly no &
  parlor --listen 127.0.0.1:18096 --redis redis://127.0.0.1:16396/0 \\
      --argon2-memory-kib 8 --argon2-iterations 1 --signups-per-ip 0 \\
      --send-rate 0 --inactivity-timeout 10m --poll-timeout 25s &
  scripts/cluster-redis-costs.py 16396 18096 500 1000
  scripts/cluster-redis-costs.py 16396 18096 5000 100 room   (room messages only)
  (several nodes: 18096,18097,18098 — requests go to them in turn)

Joins USERS users (one client process each) and reports, from Redis's
`INFO memory` used_memory and `MEMORY USAGE`:
- a lobby message: in history, in the lobby log, its client_msg_id answer;
- a lobby message once copied into every mailbox (per mailbox copy);
- a room message to USERS online members (the room's members are written
  into Redis directly, see below), and its script's duration;
- a parked poll (up to 1 000 polls parked at once, one thread each).
Never point it at a Redis that holds anything else: it writes to it.
"""
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.parse

redis_port = sys.argv[1]
parlor_ports = [int(port) for port in sys.argv[2].split(",")]
users = int(sys.argv[3])
messages = int(sys.argv[4])
only_room = sys.argv[5:] == ["room"]
TEXT = "x" * 64
turn = [0]


def redis(*args):
    return subprocess.run(["redis-cli", "-p", redis_port, *args],
                          capture_output=True, text=True).stdout.strip()


def used_memory():
    line = [l for l in redis("info", "memory").splitlines() if l.startswith("used_memory:")][0]
    return int(line.split(":")[1])


def call(method, path, body=None, timeout=60):
    turn[0] += 1
    port = parlor_ports[turn[0] % len(parlor_ports)]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body, {"content-type": "application/x-www-form-urlencoded"})
    answer = conn.getresponse()
    status, body = answer.status, json.loads(answer.read())
    conn.close()
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {body}")
    return body


def post(path, **fields):
    return call("POST", path, urllib.parse.urlencode(fields))


def poll(client, timeout_ms):
    query = urllib.parse.urlencode({"token": client[0], "cursor": client[1], "timeout": timeout_ms})
    answer = call("GET", "/poll?" + query)
    client[1] = answer["cursor"]
    return answer["events"]


def drain(clients):
    for client in clients:
        while poll(client, 0):
            pass


def slowlog_scripts():
    """{script sha: [durations in µs]} of the EVALSHAs in SLOWLOG, as
    redis-cli prints each entry: id, time, duration, then the command's
    words (EVALSHA, the sha, ...). Turns the slow log back to normal."""
    log = redis("slowlog", "get", "1000000").splitlines()
    redis("config", "set", "slowlog-log-slower-than", "10000")
    runs = {}
    for index, line in enumerate(log):
        if line.lower() == "evalsha" and index + 1 < len(log):
            runs.setdefault(log[index + 1], []).append(int(log[index - 1]))
    return runs


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def per(delta, count):
    return f"{delta / count:.0f} B"


clients = []
for i in range(users):
    joined = post("/join", name=f"user{i}", password="pw")
    clients.append([joined["token"], joined["cursor"]])
sender = clients[0][0]
print(f"{users} online users, {messages} messages of {len(TEXT)} bytes of text each")


def lobby_messages():
    drain(clients)
    before = used_memory()
    for n in range(messages):
        post("/send", token=sender, conversation="lobby", text=TEXT, client_msg_id=f"lobby-{n}")
    sent = used_memory()
    print(f"lobby message, before any poll: {per(sent - before, messages)} "
          f"(history {per(int(redis('memory', 'usage', 'parlor:hist:{lobby}', 'samples', '0')), messages)}, "
          f"lobby log {per(int(redis('memory', 'usage', 'parlor:lobbylog', 'samples', '0')), messages)}, "
          f"client_msg_id answer {redis('memory', 'usage', 'parlor:cmid:{user0}:lobby-0')} B)")
    # Each mailbox copies the lobby messages at its reads (at most 256 per
    # read). Reading again from the same cursor acknowledges nothing, so every
    # copy stays in the mailbox.
    for client in clients:
        cursor = client[1]
        for _ in range(messages // 256 + 2):
            poll(client, 0)
            client[1] = cursor
    copied = users * messages
    in_mailboxes = used_memory()
    mbox = int(redis("memory", "usage", "parlor:mbox:{user1}", "samples", "0"))
    print(f"a lobby message copied into a mailbox: {per(in_mailboxes - sent, copied)} per copy "
          f"(MEMORY USAGE of one mailbox / its events: {per(mbox, messages)})")
    drain(clients)
    drained = used_memory()
    print(f"every mailbox drained: {drained - before:+d} B left from the {messages} messages "
          f"(history, log and client_msg_id answers)")


def room_messages():
    # The room's members are written straight into Redis: joining them one by
    # one would send each joiner's member_joined to every earlier member (N²/2
    # events, overflowing the first mailboxes long before 5 000).
    post("/rooms/join", token=sender, name="costs")
    names = [f"user{i}" for i in range(users)]
    redis("sadd", "parlor:members:{costs}", *names)
    for name in names:
        redis("sadd", f"parlor:urooms:{{{name}}}", "costs")
    before = used_memory()
    mailbox_before = int(redis("memory", "usage", "parlor:mbox:{user1}", "samples", "0") or 0)
    history_before = int(redis("memory", "usage", "parlor:hist:{costs}", "samples", "0") or 0)
    # Commands of 100 µs or more only: at 0, Redis would log every command
    # a script runs too, and slow the scripts down doing it.
    redis("config", "set", "slowlog-log-slower-than", "100")
    redis("config", "set", "slowlog-max-len", "100000")
    redis("slowlog", "reset")
    for n in range(messages):
        post("/send", token=sender, conversation="costs", text=TEXT)
    room_scripts = slowlog_scripts()
    room = used_memory()
    mailbox = int(redis("memory", "usage", "parlor:mbox:{user1}", "samples", "0"))
    history = int(redis("memory", "usage", "parlor:hist:{costs}", "samples", "0"))
    print(f"room message to {users} online members: {per(room - before, messages)} in all "
          f"(Redis's used_memory, client buffers included): {per(history - history_before, messages)} "
          f"in history, {per(mailbox - mailbox_before, messages)} in each member's mailbox")
    # The send script is the one run once per message (the sweeper's runs once
    # a second, and nothing else ran); a run under 100 µs is not logged.
    sends = max(room_scripts.values(), key=len) if room_scripts else []
    if len(sends) >= messages / 2:
        print(f"  its send script ({len(sends)} runs of 100 µs or more): "
              f"p50 {quantile(sends, 0.5)} µs, min {min(sends)} µs, max {max(sends)} µs")
    else:
        print("  its send script ran under 100 µs")


def parked_polls():
    drain(clients)
    # Parked polls: up to 1 000 clients park at once (a thread each); Redis
    # memory is read while they wait.
    before = used_memory()
    parked = []
    parkers = clients[:1000]
    for client in parkers:
        thread = threading.Thread(target=poll, args=(client, 20000), daemon=True)
        thread.start()
        parked.append(thread)
    time.sleep(3)
    during = used_memory()
    print(f"parked poll: {(during - before) / len(parkers):+.1f} B each ({len(parkers)} parked)")
    post("/send", token=sender, conversation="lobby", text=TEXT)

    for thread in parked:
        thread.join()


if only_room:
    # Nobody polls: mailboxes hold only the room's messages.
    room_messages()
else:
    lobby_messages()
    drain(clients)
    room_messages()
    parked_polls()
