#!/usr/bin/env bash
# Profiles of issue 17's rows: one `parlor-bench compare` run per server
# (the shape and pinning of scripts/compare-nchan.sh: server on CPU 0, the
# generator on CPU 1, SCHED_IDLE busy loops on both), with a profiler
# attached to the server for each measured phase, started and stopped on
# the generator's progress lines:
#   wake-chat, wake-bench   the two wake shapes, 5 000 polls parked (whole
#                           phase, its 1 s warm-up included)
#   fanout                  the fan-out rounds to the crowd
#   tput-chat, tput-bench   the two throughput shapes, measured part only
# Each phase directory gets the server's counters before and after (parlor:
# /metrics; Nchan: /nchan_status), CPU time per thread, and TOOL's output:
#   TOOL=perf    perf record -e cpu-clock -F 999 --call-graph dwarf (the
#                server process), reduced to text: flat top symbols, the
#                split by component (scripts/perf-split.py), and the
#                callers of the top entries
#   TOOL=trace   perf trace -s: syscalls by thread, count and time
#   TOOL=sched   perf sched record on CPU 0 (every task there, the floor
#                server and busy loops included): perf sched timehist -s,
#                and the longest run slices of the server's threads
#   TOOL=callgrind  parlor runs under valgrind --tool=callgrind, collecting
#                only during the phases (callgrind_control -i on/off, a
#                dump per phase): instruction counts, which the noisy
#                machine does not move (parlor only; slow: give
#                COMPARE_ARGS="--wake-duration 3s --throughput-duration 5s")
#
#   scripts/profile-issue17.sh OUT_DIR
#
# Environment: SERVERS ("sqlite nchan"; also "ephemeral"), TOOL (perf),
# SUBSCRIBERS (5000), PAIRS (100), COMPARE_ARGS (more `compare` options),
# NO_BUILD=1. Needs perf, nginx and libnginx-mod-nchan, and tracefs for
# TOOL=trace|sched (mount -t tracefs nodev /sys/kernel/tracing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tool=${TOOL:-perf}
subscribers=${SUBSCRIBERS:-5000}
pairs=${PAIRS:-100}
servers=${SERVERS:-sqlite nchan}
read -r -a extra <<<"${COMPARE_ARGS:-}"

if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release --bin parlor --bin parlor-bench --manifest-path "$root/Cargo.toml" >&2
fi
parlor=$root/target/release/parlor
bench=$root/target/release/parlor-bench
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

wait_for() {
    for _ in $(seq 100); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "profile: $1 never answered" >&2
    return 1
}

start_nginx() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    sed -e "s#@PREFIX@#$dir#g" -e "s#@PORT@#$port#g" \
        "$root/contrib/nchan/nginx.conf.in" >"$dir/nginx.conf"
    taskset -c 0 nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/out" 2>&1 &
    nginx_master=$!
    pids+=("$nginx_master")
    wait_for "http://127.0.0.1:$port/floor"
}

floor_port=$(free_port)
start_nginx "$out/nginx-floor" "$floor_port"

# counters URL FILE: the server's own counters.
counters() {
    curl -sf "$1" >"$2" 2>/dev/null || echo "unavailable" >"$2"
}

# threads PID FILE: CPU seconds (utime+stime, in ticks of 1/100 s) per thread.
threads() {
    local task
    for task in /proc/"$1"/task/*; do
        awk '{ sub(/^[^(]*\(/, ""); name = $0; sub(/\).*/, "", name);
               n = split($0, f, ") "); split(f[n], g, " ");
               printf "%s\t%s\t%d\n", FILENAME, name, g[12] + g[13] }' "$task/stat" 2>/dev/null
    done | sed "s#/proc/$1/task/##; s#/stat##" >"$2"
}

# wait_line FILE PATTERN [N]: until N lines (1) of FILE match PATTERN.
wait_line() {
    until (($(grep -c -- "$2" "$1" 2>/dev/null || true) >= ${3:-1})); do
        [[ -e $1.done ]] && return 1
        sleep 0.05
    done
}

# start_tool PID DIR / stop_tool: the profiler of one phase.
start_tool() {
    local pid=$1 dir=$2
    case $tool in
    perf)
        taskset -c 1 perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 \
            -p "$pid" -o "$dir/perf.data" 2>"$dir/perf.err" &
        ;;
    trace)
        taskset -c 1 perf trace -s -p "$pid" -o "$dir/trace.txt" 2>"$dir/perf.err" &
        ;;
    sched)
        taskset -c 1 perf sched record -C 0 -o "$dir/sched.data" 2>"$dir/perf.err" &
        ;;
    callgrind)
        callgrind_control -z "$pid" >/dev/null
        callgrind_control -i on "$pid" >/dev/null
        tool_pid=
        tool_dir=$dir
        tool_server=$pid
        return
        ;;
    esac
    tool_pid=$!
    sleep 0.3
}

stop_tool() {
    if [[ $tool == callgrind ]]; then
        callgrind_control -d "$(basename "$tool_dir")" "$tool_server" >/dev/null
        callgrind_control -i off "$tool_server" >/dev/null
        local dump
        dump=$(ls -t "$run"/callgrind.out.* 2>/dev/null | head -1 || true)
        [[ -n $dump ]] && mv "$dump" "$tool_dir/callgrind.out"
        return
    fi
    kill -INT "$tool_pid" 2>/dev/null || true
    wait "$tool_pid" 2>/dev/null || true
}

# phase NAME START END SERVER_PID COUNTERS_URL [N]: one profiled phase,
# from the Nth line matching START to the Nth matching END.
phase() {
    local name=$1 start=$2 end=$3 pid=$4 url=$5 n=${6:-1} dir=$run/$1 err=$run/compare.err
    wait_line "$err" "$start" "$n" || return 1
    mkdir -p "$dir"
    counters "$url" "$dir/counters.before"
    threads "$pid" "$dir/threads.before"
    date +%s.%N >"$dir/start"
    start_tool "$pid" "$dir"
    wait_line "$err" "$end" "$n" || { stop_tool; return 1; }
    # Counters first: stopping perf record can take seconds, in which the
    # generator goes on to the next phase.
    date +%s.%N >"$dir/end"
    threads "$pid" "$dir/threads.after"
    counters "$url" "$dir/counters.after"
    stop_tool
    echo "profile: $name done" >&2
}

for server in $servers; do
    run=$out/$server
    mkdir -p "$run"
    if [[ $server == nchan ]]; then
        port=$(free_port)
        start_nginx "$run/nginx" "$port"
        url=http://127.0.0.1:$port
        status=$url
        own=$url/floor
        stop=$nginx_master
        for _ in $(seq 50); do
            pid=$(pgrep -P "$nginx_master" | head -1 || true)
            [[ -n $pid ]] && break
            sleep 0.1
        done
        counters_url=$url/nchan_status
        kind=nchan
    else
        store_flags=(--data-dir "$run/data")
        [[ $server == ephemeral ]] && store_flags=(--ephemeral)
        metrics_port=$(free_port)
        under=()
        [[ $tool == callgrind ]] && under=(valgrind --tool=callgrind --instr-atstart=no
            --callgrind-out-file="$run/callgrind.out")
        taskset -c 0 "${under[@]}" "$parlor" "${store_flags[@]}" --listen 127.0.0.1:0 \
            --metrics-listen "127.0.0.1:$metrics_port" \
            --argon2-memory-kib 8 --argon2-iterations 1 \
            --poll-timeout 10m --header-timeout 10m --inactivity-timeout 10m \
            --signups-per-ip 0 --send-rate 0 --max-connections-per-ip 0 \
            >"$run/server.out" 2>"$run/server.err" &
        pid=$!
        pids+=("$pid")
        stop=$pid
        url=""
        for _ in $(seq 600); do
            url=$(sed -n "s/^listening on //p" "$run/server.out" 2>/dev/null || true)
            [[ -n $url ]] && break
            sleep 0.1
        done
        status=http://127.0.0.1:$metrics_port
        own=$url/healthz
        counters_url=$status/metrics
        kind=parlor
    fi
    echo "profile: $server at $url, pid $pid, tool $tool" >&2
    rm -f "$run/compare.err.done"
    taskset -c 1 "$bench" compare --server "$kind" --url "$url" --status-url "$status" \
        --server-pid "$pid" --floor "nginx=http://127.0.0.1:$floor_port/floor" \
        --floor "own=$own" --subscribers "$subscribers" --pairs "$pairs" "${extra[@]}" \
        >"$run/compare.json" 2>"$run/compare.err" &
    bench_pid=$!
    {
        phase wake-chat "compare: memory" "compare: wake, sender polls:" "$pid" "$counters_url" &&
            phase wake-bench "compare: wake, sender polls:" "compare: wake, sender does not poll:" "$pid" "$counters_url" &&
            phase fanout "compare: wake, sender does not poll:" "compare: fan-out" "$pid" "$counters_url" &&
            phase tput-chat "compare: throughput measuring" "compare: throughput measured" "$pid" "$counters_url" &&
            phase tput-bench "compare: throughput measuring" "compare: throughput measured" "$pid" "$counters_url" 2
    } || true &
    watcher=$!
    wait "$bench_pid" || echo "profile: compare on $server failed" >&2
    touch "$run/compare.err.done"
    wait "$watcher" || true
    kill "$stop" 2>/dev/null || true
    wait "$stop" 2>/dev/null || true
done
echo "profile: raw output in $out; reduce it with scripts/profile-reduce.py $out OUT_DIR" >&2
