#!/usr/bin/env bash
# Cluster mode against single-node parlor, measured in one run (ratios
# within the run are the figures to compare; absolute times move with what
# else the machine runs). Starts, in a temporary directory, a scratch
# redis-server (a free port, AOF with appendfsync everysec), one
# single-node parlor (the default SQLite store) and three cluster nodes on
# that Redis, all on free ports with cheap password hashing, then runs
# target/release/parlor-bench:
#   1. wake latency: single-node; a 1-node cluster; cross-node (the poll
#      parked on node A, the /send through node B);
#   2. throughput (sender/receiver pairs, closed loop): single-node; a
#      1-node cluster; 3 nodes with each pair's sender and receiver on
#      different nodes; per CPU-second of every node and redis-server;
#   3. fan-out of lobby messages to FANOUT pollers spread over 1, 2, 3 nodes;
#   4. Redis's cost of one /send and of one poll, from exact request counts.
# Nodes B and C start only after the 1-node runs, so that those pay for
# no other subscriber. For each cluster run it diffs Redis's INFO
# commandstats and CPU time over the measured window (parlor-bench's
# progress lines mark it), and reads used_memory before the joins and once
# the polls are parked. Prints a summary with the command behind each
# figure; with KEEP=DIR the raw JSON, logs and commands are copied there.
# Usage: scripts/cluster-bench.sh [FANOUT] [DURATION]
#        (default 5000 pollers, 10s per run; about 5 minutes in all;
#        cargo build --release --bin parlor --bin parlor-bench first;
#        BIN=DIR takes both from DIR instead of target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
fanout=${1:-5000}
duration=${2:-10s}
bin=${BIN:-target/release}
dir=$(mktemp -d /tmp/parlor-cluster-bench.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$dir"/*.json "$dir"/*.txt "$dir"/*.cmd "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save "" \
    --appendonly yes --appendfsync everysec --logfile "$dir/redis.log" &
redis_pid=$!
pids+=("$redis_pid")
until redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; do sleep 0.1; done
rcli() { redis-cli -p "$redis_port" "$@"; }

# start_node NAME ARGS...: starts a parlor; sets url_NAME and pid_NAME.
start_node() {
    local name=$1
    shift
    "$bin/parlor" --listen 127.0.0.1:0 --inactivity-timeout 10m --poll-timeout 5m \
        --argon2-memory-kib 8 --argon2-iterations 1 \
        --signups-per-ip 0 --send-rate 0 --max-connections-per-ip 0 "$@" \
        >"$dir/$name.out" 2>"$dir/$name.err" &
    local pid=$!
    pids+=("$pid")
    until grep -q 'listening on' "$dir/$name.out" 2>/dev/null; do
        kill -0 "$pid" || { cat "$dir/$name.err" >&2; exit 1; }
        sleep 0.1
    done
    printf -v "url_$name" '%s' "$(sed -n 's/^listening on //p' "$dir/$name.out")"
    printf -v "pid_$name" '%s' "$pid"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
used_memory() { rcli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }

# bench NAME PIDS URLS SCENARIO ARGS...: one parlor-bench run; PIDS and
# URLS are comma-separated. At the start of its measured window Redis's
# counters are reset; at its end they are saved with Redis's CPU time.
bench() {
    local name=$1 pids=$2 urls=$3
    shift 3
    local url_args=()
    for url in ${urls//,/ }; do url_args+=(--url "$url"); done
    local cmd=("$bin/parlor-bench" "${url_args[@]}" --server-pid "$pids" "$@" --json)
    echo "${cmd[*]}" >"$dir/$name.cmd"
    echo "== $name: ${cmd[*]}" >&2
    used_memory >"$dir/$name.mem0.txt"
    "${cmd[@]}" 2>&1 >"$dir/$name.json" |
        while IFS= read -r line; do
            echo "   $line" >&2
            if [[ $line =~ ^(parked\ |floor:\ ) && ! -e "$dir/$name.start.txt" ]]; then
                used_memory >"$dir/$name.mem1.txt"
                rcli config resetstat >/dev/null
                echo "$(date +%s.%N) $(cpu_ticks "$redis_pid")" >"$dir/$name.start.txt"
            elif [[ $line =~ ^(latency|fanout|throughput):\  && $line != *s/* && ! -e "$dir/$name.end.txt" ]]; then
                echo "$(date +%s.%N) $(cpu_ticks "$redis_pid")" >"$dir/$name.end.txt"
                rcli info commandstats >"$dir/$name.stats.txt"
            fi
        done || echo "   (parlor-bench failed: its checks are in the summary)" >&2
}

start_node single --data-dir "$dir/single-data"
redis_url="redis://127.0.0.1:$redis_port/0"
start_node a --redis "$redis_url"
lat=(latency --clients 100 --rate 200 --duration "$duration")
thr=(throughput --clients 200 --duration "$duration")
fan=(fanout --clients "$fanout" --rate 1 --duration "$duration")
bench latency-single "$pid_single" "$url_single" "${lat[@]}"
bench latency-cluster1 "$pid_a,$redis_pid" "$url_a" "${lat[@]}"
bench throughput-single "$pid_single" "$url_single" "${thr[@]}"
bench throughput-cluster1 "$pid_a,$redis_pid" "$url_a" "${thr[@]}"
bench fanout-single "$pid_single" "$url_single" "${fan[@]}"
bench fanout-cluster1 "$pid_a,$redis_pid" "$url_a" "${fan[@]}"

start_node b --redis "$redis_url"
start_node c --redis "$redis_url"
nodes="$pid_a,$pid_b,$pid_c,$redis_pid"
bench latency-cross "$nodes" "$url_a,$url_b" "${lat[@]}"
bench throughput-cluster3 "$nodes" "$url_a,$url_b,$url_c" "${thr[@]}"
# Redis's cost of a request, counted exactly: 500 /send of a dialog message
# through node B to a user who is online on node A but not polling, then
# 500 polls (timeout=0, nothing new) through node C.
echo "== requests: 500 /send, 500 polls through one node each" >&2
python3 - "$redis_port" "${url_a#http://}" "${url_b#http://}" "${url_c#http://}" \
    >"$dir/requests.json" <<'PY'
import http.client, json, subprocess, sys, urllib.parse
redis_port, a, b, c = sys.argv[1:]
def call(node, method, path, body=None):
    conn = http.client.HTTPConnection(node, timeout=30)
    conn.request(method, path, body, {"content-type": "application/x-www-form-urlencoded"})
    answer = conn.getresponse()
    status, data = answer.status, json.loads(answer.read())
    conn.close()
    assert status == 200, (path, status, data)
    return data
def stats():
    out = subprocess.run(["redis-cli", "-p", redis_port, "info", "commandstats"],
                         capture_output=True, text=True).stdout
    return out
def reset():
    subprocess.run(["redis-cli", "-p", redis_port, "config", "resetstat"], capture_output=True)
sender = call(a, "POST", "/join", "name=req-sender&password=pw-sender")
receiver = call(a, "POST", "/join", "name=req-receiver&password=pw-receiver")
dialog = call(a, "POST", "/dialog", f"token={sender['token']}&with=req-receiver")["conversation"]["id"]
n = 500
reset()
for i in range(n):
    call(b, "POST", "/send", f"token={sender['token']}&conversation={urllib.parse.quote(dialog)}"
         f"&client_msg_id=req.{i}&text={'x' * 64}")
send_stats = stats()
cursor = receiver["cursor"]
while True:
    polled = call(c, "GET", f"/poll?token={receiver['token']}&cursor={cursor}&timeout=0")
    if polled["cursor"] == cursor:
        break
    cursor = polled["cursor"]
reset()
for i in range(n):
    call(c, "GET", f"/poll?token={receiver['token']}&cursor={cursor}&timeout=0")
poll_stats = stats()
print(json.dumps({"requests": n, "send_stats": send_stats, "poll_stats": poll_stats}))
PY

bench fanout-cluster2 "$nodes" "$url_a,$url_b" "${fan[@]}"
bench fanout-cluster3 "$nodes" "$url_a,$url_b,$url_c" "${fan[@]}"

python3 - "$dir" "$fanout" <<'PY'
import json, sys
dir, fanout = sys.argv[1], int(sys.argv[2])
def load(name):
    run = json.load(open(f"{dir}/{name}.json"))
    bad = {k: v for k, v in run["verify"].items() if v}
    run["verify"] = "ok (none lost, duplicated or out of order)" if not bad else bad
    return run
def cmd(name):
    return open(f"{dir}/{name}.cmd").read().strip()
def commandstats(text):
    stats = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line.split(":", 1)
            fields = dict(field.split("=") for field in fields.split(","))
            stats[name[8:]] = (int(fields["calls"]), int(fields["usec"]))
    stats.pop("info", None)
    stats.pop("config|resetstat", None)
    return stats
def per(stats, n):
    scripts = sum(calls for name, (calls, _) in stats.items() if name in ("evalsha", "eval", "fcall"))
    total = sum(calls for calls, _ in stats.values())
    return f"{scripts / n:.2f} script runs, {total / n:.1f} commands (those inside scripts included)"
def window(name):
    t0, c0 = map(float, open(f"{dir}/{name}.start.txt").read().split())
    t1, c1 = map(float, open(f"{dir}/{name}.end.txt").read().split())
    return t1 - t0, (c1 - c0) / 100.0
def mem(name, k):
    return int(open(f"{dir}/{name}.mem{k}.txt").read())
print()
print("== wake latency: /send issued -> the receiver holds the answer (p50 / p99)")
lat = {name: load(f"latency-{name}") for name in ("single", "cluster1", "cross")}
for name, run in lat.items():
    w, f = run["wake_us"], run["floor_us"]
    print(f"  {name:9} wake {w['p50']:.0f} / {w['p99']:.0f} µs, floor {f['p50']:.0f} µs, "
          f"checks {run['verify']}   [{cmd('latency-' + name)}]")
s, one, x = (lat[n]["wake_us"] for n in ("single", "cluster1", "cross"))
print(f"  cross-node / single-node: p50 {x['p50'] / s['p50']:.2f}x, p99 {x['p99'] / s['p99']:.2f}x")
print(f"  cross-node / 1-node cluster: p50 {x['p50'] / one['p50']:.2f}x, p99 {x['p99'] / one['p99']:.2f}x")
print(f"  1-node cluster / single-node: p50 {one['p50'] / s['p50']:.2f}x, p99 {one['p99'] / s['p99']:.2f}x")
for name in ("cluster1", "cross"):
    seconds, redis_cpu = window(f"latency-{name}")
    messages = lat[name]["messages"]
    print(f"  Redis per exchange ({name}: a /send and the parked poll it wakes): "
          f"{per(commandstats(open(f'{dir}/latency-{name}.stats.txt').read()), messages)}, "
          f"{redis_cpu / messages * 1e6:.0f} µs of Redis CPU")

print()
print("== throughput: deliveries per CPU-second of the servers (nodes + redis-server)")
thr = {name: load(f"throughput-{name}") for name in ("single", "cluster1", "cluster3")}
for name, run in thr.items():
    seconds, redis_cpu = window(f"throughput-{name}")
    extra = ""
    if name != "single":
        extra = (f"; Redis CPU {redis_cpu / run['deliveries'] * 1e6:.0f} µs per delivery "
                 f"({redis_cpu / seconds * 100:.0f}% of a core), "
                 f"{per(commandstats(open(f'{dir}/throughput-{name}.stats.txt').read()), run['deliveries'])} per delivery")
    print(f"  {name:9} {run['deliveries_per_s']:.0f}/s, {run['deliveries_per_server_cpu_s']:.0f} per CPU-s "
          f"(servers at {run['server_cpu_share'] * 100:.0f}% of a core){extra}; checks {run['verify']}"
          f"   [{cmd('throughput-' + name)}]")
base = thr["single"]["deliveries_per_server_cpu_s"]
for name in ("cluster1", "cluster3"):
    print(f"  {name} per CPU-s / single-node's: {thr[name]['deliveries_per_server_cpu_s'] / base:.2f}x")

print()
print(f"== fan-out: one lobby message to {fanout} parked polls, until the last has it (p50 / max)")
for name in ("single", "cluster1", "cluster2", "cluster3"):
    try:
        run = load(f"fanout-{name}")
    except (OSError, ValueError, KeyError) as error:
        print(f"  {name:9} not measured ({error})")
        continue
    last = run["last_ms"]
    line = (f"  {name:9} {last['p50']:.0f} / {last['max']:.0f} ms over {run['messages']} messages, "
            f"{run['deliveries'] / max(run['server_cpu_s'], 1e-9):.0f} deliveries per CPU-s; checks {run['verify']}")
    if name != "single":
        seconds, redis_cpu = window(f"fanout-{name}")
        line += (f"; Redis CPU {redis_cpu / max(run['deliveries'], 1) * 1e6:.0f} µs per delivery, "
                 f"{per(commandstats(open(f'{dir}/fanout-{name}.stats.txt').read()), max(run['deliveries'], 1))} per delivery")
    print(line + f"   [{cmd('fanout-' + name)}]")
try:
    used = mem("fanout-cluster1", 1) - mem("fanout-cluster1", 0)
except (OSError, ValueError):
    used = float("nan")
print(f"  Redis memory per parked user (fanout-cluster1: used_memory once parked - before the joins, "
      f"/ {fanout + 1} users): {used / (fanout + 1):.0f} B")

print()
req = json.load(open(f"{dir}/requests.json"))
n = req["requests"]
print(f"== Redis per request ({n} of each, counted exactly, INFO commandstats)")
print(f"  /send (dialog message, receiver online, not polling): {per(commandstats(req['send_stats']), n)}")
print(f"  poll (timeout=0, nothing new): {per(commandstats(req['poll_stats']), n)}")
for which in ("send_stats", "poll_stats"):
    stats = commandstats(req[which])
    print(f"    {which[:4]}: " + ", ".join(f"{name} {calls / n:.2f}" for name, (calls, _) in
                                            sorted(stats.items(), key=lambda kv: -kv[1][0])))
PY
