#!/usr/bin/env bash
# Redis's own latency while lobby messages reach thousands of parked polls
# in cluster mode. Starts a scratch redis-server (a free port, a temporary
# directory, AOF with appendfsync always as in production) and NODES parlor
# nodes (target/release) on it, runs `parlor-bench fanout` with CLIENTS
# pollers in the lobby, spread round robin over the nodes (the sender on
# the first), and meanwhile records:
#   - a PING round trip every millisecond on a connection of its own (what
#     `redis-cli --latency` does), with the time of each;
#   - `redis-cli --latency-history -i 1` beside it (whole milliseconds, one
#     min/max/avg line a second), as a second opinion on the PINGs;
#   - Redis's latency monitor (`latency-monitor-threshold 1`: every event of
#     1 ms or longer, by kind: a command, an AOF write or fsync, ...), read
#     with LATENCY LATEST and LATENCY HISTORY at the end;
#   - INFO commandstats: how many scripts ran and their mean time;
#   - SLOWLOG: every command that ran 1 ms or longer (a lower threshold
#     would log each command a script runs and slow the scripts down);
#   - Redis's CPU time (INFO cpu, user+sys) for the joins, and for the
#     catch-up that follows (every user polls until it has read the
#     presence of those who joined after it).
# All are for the measured window only (parlor-bench's progress lines mark
# its start and end), not for the joins and the parking before it.
# SLOWLOG and the latency monitor time what Redis's thread did; the PINGs
# also wait while the VM or the kernel runs something else instead of
# Redis. PIN=1 separates the two: redis-server runs alone on the last CPU
# (taskset), the nodes, parlor-bench and the samplers on the others.
# APPENDFSYNC=everysec moves the AOF's fsync off Redis's thread, to tell
# its cost from the scripts'.
# Usage: [NODES=1] [PIN=1 [SAMPLERS_WITH_REDIS=1]] [APPENDFSYNC=always] scripts/cluster-lobby-latency.sh [CLIENTS] [DURATION]
#        (default 5000 pollers for 15s on 1 node; cargo build --release
#        first; BIN=DIR takes parlor and parlor-bench from DIR instead of
#        target/release, to compare two builds in one sitting; KEEP=DIR
#        keeps the raw files)
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-5000}
duration=${2:-15s}
bin=${BIN:-target/release}
nodes=${NODES:-1}
# taskset prefixes: Redis on the last CPU, everything else on the others.
redis_on=()
rest_on=()
if [[ ${PIN:-0} == 1 ]]; then
    last=$(($(nproc) - 1))
    redis_on=(taskset -c "$last")
    rest_on=(taskset -c "0-$((last - 1))")
fi
# The PING samplers' CPU: with the nodes (default), or, with
# SAMPLERS_WITH_REDIS=1 and PIN=1, on Redis's CPU, so that a PING's round
# trip does not include the sampler's own wait for a CPU the nodes keep busy.
samplers_on=("${rest_on[@]}")
if [[ ${SAMPLERS_WITH_REDIS:-0} == 1 ]]; then samplers_on=("${redis_on[@]}"); fi
dir=$(mktemp -d /tmp/parlor-lobby-latency.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp -r "$dir"/*.txt "$dir"/*.json "$dir"/*.err "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

"${redis_on[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save "" \
    --appendonly yes --appendfsync "${APPENDFSYNC:-always}" --logfile "$dir/redis.log" &
pids+=($!)
until redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; do sleep 0.1; done

urls=()
node_pids=()
for n in $(seq 1 "$nodes"); do
    "${rest_on[@]}" "$bin/parlor" --listen 127.0.0.1:0 --redis "redis://127.0.0.1:$redis_port/0" \
        --inactivity-timeout 10m --argon2-memory-kib 8 --argon2-iterations 1 \
        --signups-per-ip 0 --send-rate 0 --max-connections-per-ip 0 \
        >"$dir/parlor$n.out" 2>"$dir/parlor$n.err" &
    node_pids+=($!)
    pids+=($!)
    until grep -q 'listening on' "$dir/parlor$n.out" 2>/dev/null; do sleep 0.1; done
    urls+=(--url "$(sed -n 's/^listening on //p' "$dir/parlor$n.out")")
done
node_list=$(IFS=,; echo "${node_pids[*]}")

redis-cli -p "$redis_port" config set slowlog-log-slower-than 1000 >/dev/null
redis-cli -p "$redis_port" config set slowlog-max-len 100000 >/dev/null
redis-cli -p "$redis_port" config set latency-monitor-threshold 1 >/dev/null
"${samplers_on[@]}" python3 -u -c '
import socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    started = time.perf_counter()
    sock.sendall(b"PING\r\n")
    sock.recv(64)
    print(f"{time.time():.3f} {(time.perf_counter() - started) * 1000:.3f}")
    time.sleep(0.001)
' "$redis_port" >"$dir/latency.txt" &
sampler=$!
pids+=($sampler)
"${samplers_on[@]}" stdbuf -oL redis-cli -p "$redis_port" --latency-history -i 1 >"$dir/latency-history.txt" &
history=$!
pids+=($history)
redis_cpu() { redis-cli -p "$redis_port" info cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(user|sys):/ { total += $2 } END { print total }'; }
redis_cpu >"$dir/cpu-start"
# The line that ends the setup ("parked N polls") resets Redis's counters;
# the summary line that ends the measured window reads them.
"${rest_on[@]}" "$bin/parlor-bench" "${urls[@]}" --server-pid "$node_list" fanout \
    --clients "$clients" --duration "$duration" --setup-timeout 20m --json 2>&1 >"$dir/fanout.json" |
    while IFS= read -r line; do
        echo "$line" >&2
        if [[ $line == joined\ * ]]; then
            redis_cpu >"$dir/cpu-joined"
        elif [[ $line == caught\ * ]]; then
            redis_cpu >"$dir/cpu-caught-up"
        fi
        if [[ $line == parked\ * && ! -e "$dir/start" ]]; then
            redis-cli -p "$redis_port" config resetstat >/dev/null
            redis-cli -p "$redis_port" slowlog reset >/dev/null
            redis-cli -p "$redis_port" latency reset >/dev/null
            date +%s.%N >"$dir/start"
        elif [[ $line == fanout:\ *messages\ to* && $line != *s/* && ! -e "$dir/end" ]]; then
            date +%s.%N >"$dir/end"
            redis-cli -p "$redis_port" info commandstats >"$dir/commandstats.txt"
            redis-cli -p "$redis_port" slowlog get 100000 >"$dir/slowlog.txt"
            redis-cli -p "$redis_port" latency latest >"$dir/latency-latest.txt"
            for event in command fast-command aof-write aof-fsync-always aof-write-pending-fsync \
                aof-write-active-child aof-write-alone expire-cycle eviction-cycle; do
                redis-cli -p "$redis_port" latency history "$event" |
                    paste - - | sed "s/^/$event /" >>"$dir/latency-events.txt"
            done
        fi
    done
kill "$sampler" "$history"

python3 - "$dir" "$clients" "$nodes" "${PIN:-0}" <<'PY'
import json, sys
dir, clients, nodes, pin = sys.argv[1:]
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))]
fanout = json.load(open(f"{dir}/fanout.json"))
print(f"parlor-bench fanout, {clients} pollers over {nodes} node(s)"
      + (", redis-server pinned to a CPU of its own" if pin == "1" else "")
      + (" (the PING samplers on it too)" if __import__('os').environ.get('SAMPLERS_WITH_REDIS') == "1" else "")
      + f", appendfsync {__import__('os').environ.get('APPENDFSYNC', 'always')}:", json.dumps(fanout))
cpu = lambda name: float(open(f"{dir}/cpu-{name}").read())
print(f"Redis CPU (user+sys): joins {cpu('joined') - cpu('start'):.1f} s, "
      f"then catching every user up on presence {cpu('caught-up') - cpu('joined'):.1f} s")
start, end = float(open(f"{dir}/start").read()), float(open(f"{dir}/end").read())
print(f"measured window: {end - start:.1f} s")
for line in open(f"{dir}/commandstats.txt"):
    if line.startswith(("cmdstat_evalsha:", "cmdstat_ping:")):
        name, fields = line.strip().split(":", 1)
        stats = dict(field.split("=") for field in fields.split(","))
        print(f"  {name[8:]}: {stats['calls']} calls, {float(stats['usec_per_call']):.1f} µs each "
              f"on average, {int(stats['usec']) / 1000 / (end - start):.0f} ms of Redis time per second")
log = open(f"{dir}/slowlog.txt").read().splitlines()
# Each entry as redis-cli prints it: id, unix time, duration (µs), the
# command's words, client address, client name.
slow = [(int(log[i - 1]), log[i + 3:i + 6]) for i, line in enumerate(log)
        if line.lower() == "evalsha"]
print(f"  scripts that ran 1 ms or longer: {len(slow)}"
      + (f", p50 of those {q([us for us, _ in slow], .5)} µs; the longest, with their "
         f"first arguments: {sorted(slow, reverse=True)[:3]}" if slow else ""))
pings = [line.split() for line in open(f"{dir}/latency.txt")]
# Each PING's send time and round trip; it was printed when it came back.
sent = [(float(at) - float(ms) / 1000, float(ms)) for at, ms in pings]
pings = [float(ms) for at, ms in (line for line in pings) if start <= float(at) <= end]
print(f"PING round trips in the window ({len(pings)}): p50 {q(pings, .5):.2f} ms, "
      f"p99 {q(pings, .99):.2f} ms, p99.9 {q(pings, .999):.2f} ms, max {max(pings):.2f} ms")
# The sampler sends its next PING when the last came back, so it samples an
# idle Redis far more often than a busy one. Weighting each PING by the
# time until the next one gives what a command sent at a random moment of
# the window waits.
weighted = sorted((ms, later[0] - at) for (at, ms), later in zip(sent, sent[1:])
                  if start <= at <= end)
total = sum(weight for _, weight in weighted)
def wq(p):
    seen = 0
    for ms, weight in weighted:
        seen += weight
        if seen >= p * total:
            return ms
    return weighted[-1][0]
slow = sum(weight for ms, weight in weighted if ms >= 5) / total
print(f"PING round trip at a random moment of the window (each PING weighted by the time to the "
      f"next): p50 {wq(.5):.2f} ms, p90 {wq(.9):.2f} ms, p99 {wq(.99):.2f} ms; "
      f"5 ms or more {slow * 100:.0f} % of the time")
history = [line.split() for line in open(f"{dir}/latency-history.txt")]
seconds = [history[i - 1] for i, line in enumerate(history) if line and line[0] == "--"]
if seconds:
    worst = [int(second[1]) for second in seconds]
    print(f"redis-cli --latency-history -i 1, whole ms, over the whole run ({len(seconds)} s): "
          f"worst second's max {max(worst)} ms, seconds with a max of 5 ms or more: "
          f"{sum(1 for ms in worst if ms >= 5)}")
events = [line.split() for line in open(f"{dir}/latency-events.txt")] if __import__("os").path.exists(f"{dir}/latency-events.txt") else []
by_kind = {}
for kind, at, ms in (event for event in events if len(event) == 3):
    if start <= int(at) <= end + 1:
        by_kind.setdefault(kind, []).append(int(ms))
print("latency monitor (events of 1 ms or more in the window, by kind): "
      + (", ".join(f"{kind} {len(ms)} events, max {max(ms)} ms, p50 {q(ms, .5)} ms"
                   for kind, ms in sorted(by_kind.items())) or "none"))
print("LATENCY LATEST: " + " | ".join(line.strip() for line in open(f"{dir}/latency-latest.txt")))
PY
