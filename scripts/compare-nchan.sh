#!/usr/bin/env bash
# parlor against Nchan, side by side in one sitting (issue 17's table):
# Nchan (nginx, one worker), parlor with its default store (SQLite in a temp
# --data-dir) and parlor --ephemeral, one after the other, each pinned to
# CPU 0, with `parlor-bench compare` pinned to CPU 1 and SCHED_IDLE busy
# loops keeping both CPUs awake (this kind of VM halts an idle CPU, and
# waking it costs tens of µs). Two floor servers stay up on CPU 0 for the
# whole sitting: nginx answering `return 200` and a bare hyper service
# (examples/hyper-floor.rs); each run measures them and the server's own
# cheapest answer in alternating rounds.
#
#   scripts/compare-nchan.sh [OUT_DIR]      # default: a new /tmp/compare-nchan.* dir
#
# Environment: SUBSCRIBERS (5000), PAIRS (100), ROUNDS (1: sittings, each
# server once per round, in turn), SERVERS ("nchan sqlite ephemeral"),
# COMPARE_ARGS (more `parlor-bench compare` options, e.g. "--wake-duration 5s"),
# NO_BUILD=1 to use target/release as it is, PARLOR_BENCH=1 to also run
# parlor-bench's own latency, fanout and throughput scenarios against each
# parlor store (a fresh server each, same flags and pinning; about 2 more
# minutes per store).
# Writes OUT_DIR/<server>-<round>.json and prints the table
# (scripts/compare-table.py OUT_DIR/*.json prints it again). Needs nginx and
# libnginx-mod-nchan (Debian: apt-get install nginx libnginx-mod-nchan).
# Takes about 2 minutes per server at 5 000 subscribers.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$(mktemp -d /tmp/compare-nchan.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
subscribers=${SUBSCRIBERS:-5000}
pairs=${PAIRS:-100}
rounds=${ROUNDS:-1}
servers=${SERVERS:-nchan sqlite ephemeral}
read -r -a extra <<<"${COMPARE_ARGS:-}"

if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release --bin parlor --bin parlor-bench --example hyper-floor \
        --manifest-path "$root/Cargo.toml" >&2
fi
parlor=$root/target/release/parlor
bench=$root/target/release/parlor-bench
hyper_floor=$root/target/release/examples/hyper-floor

# One connection per subscriber, on both sides.
ulimit -n "$(ulimit -Hn)"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

for cpu in 0 1; do
    taskset -c $cpu chrt --idle 0 sh -c 'while :; do :; done' &
    pids+=($!)
done

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for URL: until it answers (10 s at most).
wait_for() {
    for _ in $(seq 100); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "compare-nchan: $1 never answered" >&2
    return 1
}

# start_nginx DIR PORT: an nginx of contrib/nchan/nginx.conf.in pinned to
# CPU 0; sets nginx_master.
start_nginx() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    sed -e "s#@PREFIX@#$dir#g" -e "s#@PORT@#$port#g" \
        "$root/contrib/nchan/nginx.conf.in" >"$dir/nginx.conf"
    taskset -c 0 nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        >"$dir/out" 2>&1 &
    nginx_master=$!
    pids+=("$nginx_master")
    wait_for "http://127.0.0.1:$port/floor"
}

# The nginx worker (Nchan's work runs there, not in the master).
worker_of() {
    local worker
    for _ in $(seq 50); do
        worker=$(pgrep -P "$1" | head -1 || true)
        [[ -n $worker ]] && { echo "$worker"; return; }
        sleep 0.1
    done
    echo "compare-nchan: no nginx worker under $1" >&2
    return 1
}

floor_port=$(free_port)
start_nginx "$out/nginx-floor" "$floor_port"
taskset -c 0 "$hyper_floor" 127.0.0.1:0 >"$out/hyper-floor.out" &
pids+=($!)
for _ in $(seq 100); do
    hyper_addr=$(head -1 "$out/hyper-floor.out" 2>/dev/null || true)
    [[ -n $hyper_addr ]] && break
    sleep 0.1
done
floors=(--floor "nginx=http://127.0.0.1:$floor_port/floor" --floor "hyper=http://$hyper_addr/")

# start_parlor STORE DIR: a fresh parlor pinned to CPU 0; sets parlor_pid,
# parlor_url and metrics_port.
start_parlor() {
    local store=$1 dir=$2 store_flags
    store_flags=(--data-dir "$dir/data")
    [[ $store == ephemeral ]] && store_flags=(--ephemeral)
    mkdir -p "$dir"
    metrics_port=$(free_port)
    # Cheap argon2 so that 5 000 /joins take seconds; timeouts as long as
    # Nchan's (its subscribers never time out); the load generator joins
    # thousands from one address and sends as fast as it can.
    taskset -c 0 "$parlor" "${store_flags[@]}" --listen 127.0.0.1:0 \
        --metrics-listen "127.0.0.1:$metrics_port" \
        --argon2-memory-kib 8 --argon2-iterations 1 \
        --poll-timeout 10m --header-timeout 10m --inactivity-timeout 10m \
        --signups-per-ip 0 --send-rate 0 --max-connections-per-ip 0 \
        >"$dir/server.out" 2>"$dir/server.err" &
    parlor_pid=$!
    pids+=("$parlor_pid")
    parlor_url=""
    for _ in $(seq 100); do
        parlor_url=$(sed -n "s/^listening on //p" "$dir/server.out" 2>/dev/null || true)
        [[ -n $parlor_url ]] && break
        sleep 0.1
    done
    [[ -n $parlor_url ]] || { cat "$dir/server.err" >&2; return 1; }
}

# compare SERVER ROUND: one server, fresh, through every shape.
compare() {
    local server=$1 round=$2 dir=$out/$1-$2 url status pid own stop
    mkdir -p "$dir"
    if [[ $server == nchan ]]; then
        local port
        port=$(free_port)
        start_nginx "$dir/nginx" "$port"
        url=http://127.0.0.1:$port
        status=$url
        own=$url/floor
        stop=$nginx_master
        pid=$(worker_of "$nginx_master")
    else
        start_parlor "$server" "$dir"
        url=$parlor_url
        pid=$parlor_pid
        stop=$pid
        status=http://127.0.0.1:$metrics_port
        own=$url/healthz
    fi
    echo "compare-nchan: $server (round $round) at $url, server pid $pid" >&2
    local kind=parlor
    [[ $server == nchan ]] && kind=nchan
    taskset -c 1 "$bench" compare --server "$kind" \
        --url "$url" --status-url "$status" --server-pid "$pid" \
        "${floors[@]}" --floor "own=$own" \
        --subscribers "$subscribers" --pairs "$pairs" "${extra[@]}" \
        >"$out/$server-$round.json" 2>"$dir/compare.err" ||
        { echo "compare-nchan: $server failed:" >&2; tail -5 "$dir/compare.err" >&2; }
    kill "$stop" 2>/dev/null || true
    wait "$stop" 2>/dev/null || true
}

# parlor_bench STORE ROUND NAME parlor-bench-arguments...: parlor-bench's
# own shape (its floor is /healthz, its senders do not poll, its memory
# figure leaves the user out) against a fresh parlor.
parlor_bench() {
    local store=$1 round=$2 name=$3 dir
    shift 3
    dir=$out/pb-$store-$name-$round.d
    start_parlor "$store" "$dir"
    echo "compare-nchan: parlor-bench $name on $store (round $round)" >&2
    taskset -c 1 "$bench" --url "$parlor_url" --server-pid "$parlor_pid" "$@" --json \
        >"$out/pb-$store-$name-$round.json" 2>"$dir/bench.err" ||
        { echo "compare-nchan: parlor-bench $name on $store failed:" >&2; tail -5 "$dir/bench.err" >&2; }
    kill "$parlor_pid" 2>/dev/null || true
    wait "$parlor_pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
    for server in $servers; do
        compare "${server}" "$round"
    done
    if [[ -n ${PARLOR_BENCH:-} ]]; then
        for store in $servers; do
            [[ $store == nchan ]] && continue
            parlor_bench "$store" "$round" latency latency --clients $((subscribers + 1)) --duration 10s
            parlor_bench "$store" "$round" fanout fanout --clients "$subscribers" --duration 15s --max-iterations 10
            parlor_bench "$store" "$round" throughput throughput --clients $((2 * pairs)) --duration 15s
        done
    fi
done
echo "compare-nchan: JSON in $out" >&2
python3 "$root/scripts/compare-table.py" "$out"/*.json
