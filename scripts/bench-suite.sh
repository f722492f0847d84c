#!/usr/bin/env bash
# Reproduces the figures of README.md's Performance section and
# docs/performance.md: one fresh server per run, pinned to CPU 0, with
# parlor-bench pinned to CPU 1 and low-priority busy loops keeping both CPUs
# awake (this kind of VM halts idle CPUs, and waking one costs tens of µs).
#
#   scripts/bench-suite.sh [OUT_DIR]        # default: results/
#
# Writes OUT_DIR/<store>/<run>.json (parlor-bench --json) for store in
# sqlite (the default) and ephemeral, plus OUT_DIR/unpinned/ (default store,
# no taskset), and prints one summary line per run. Takes ~15 minutes.
# Then: scripts/plot-bench.py -o docs/bench.png OUT_DIR/{sqlite,ephemeral}/*.json
set -euo pipefail

out=${1:-results}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --bin parlor --bin parlor-bench --manifest-path "$root/Cargo.toml" >&2
parlor=$root/target/release/parlor
bench=$root/target/release/parlor-bench

busy=()
stop_busy() { for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_busy EXIT
for cpu in 0 1; do
    taskset -c $cpu nice -n 19 sh -c 'while :; do :; done' &
    busy+=($!)
done

# run STORE PIN NAME parlor-bench-arguments...
run() {
    local store=$1 pin=$2 name=$3
    shift 3
    local dir=$out/$store work server_pin=() bench_pin=() store_flags=()
    mkdir -p "$dir"
    work=$(mktemp -d)
    if [[ $pin == pinned ]]; then
        server_pin=(taskset -c 0)
        bench_pin=(taskset -c 1)
    fi
    if [[ $store == ephemeral ]]; then store_flags=(--ephemeral); else store_flags=(--data-dir "$work/data"); fi
    # Cheap password hashing so thousands of /joins take seconds (and
    # argon2's buffers do not inflate RSS); a 5-minute inactivity timeout so
    # early joiners are not swept while thousands more join.
    "${server_pin[@]}" "$parlor" "${store_flags[@]}" --listen 127.0.0.1:0 \
        --argon2-memory-kib 8 --argon2-iterations 1 --inactivity-timeout 5m \
        --signups-per-ip 0 --send-rate 0 --max-connections-per-ip 0 \
        >"$work/server.out" 2>"$work/server.err" &
    local pid=$! url=""
    for _ in $(seq 100); do
        url=$(sed -n 's/^listening on //p' "$work/server.out")
        [[ -n $url ]] && break
        sleep 0.1
    done
    [[ -n $url ]] || { cat "$work/server.err" >&2; exit 1; }
    "${bench_pin[@]}" "$bench" --url "$url" --server-pid "$pid" "$@" --json >"$dir/$name.json" 2>"$work/bench.err" ||
        { echo "$store/$name failed:" >&2; tail -5 "$work/bench.err" >&2; }
    kill "$pid"
    wait "$pid" || true
    rm -rf "$work"
    python3 - "$dir/$name.json" "$store/$name" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["scenario"]
if s == "latency":
    line = f'wake p50 {r["wake_us"]["p50"]:.0f} µs = {r["ratio_p50"]:.2f}x floor {r["floor_us"]["p50"]:.0f} µs, p99 {r["wake_us"]["p99"]:.0f} µs'
elif s == "fanout":
    line = f'last p50 {r["last_ms"]["p50"]:.1f} ms, first {r["first_ms"]["p50"]:.1f} ms, {r.get("deliveries_per_server_cpu_s", 0):.0f} deliveries/CPU-s, RSS/poll {r.get("setup", {}).get("server_rss_per_parked_poll_kib")} KiB'
elif s == "throughput":
    line = f'{r.get("deliveries_per_server_cpu_s", 0):.0f} deliveries/CPU-s ({r.get("per_server_cpu_s_to_floor", 0):.2f}x floor)'
else:
    line = json.dumps({k: v for k, v in r.items() if not isinstance(v, (list, dict))})[:300]
v = r.get("verify", {})
print(f'{sys.argv[2]:28} {line}  lost {v.get("lost")} dup {v.get("duplicated")}')
EOF
}

for store in sqlite ephemeral; do
    run $store pinned latency-0 latency --clients 1 --duration 10s
    run $store pinned latency-1000 latency --clients 1001 --duration 10s
    run $store pinned latency-5000 latency --clients 5001 --duration 10s
    run $store pinned fanout-100 fanout --clients 100 --duration 10s
    run $store pinned fanout-1000 fanout --clients 1000 --duration 10s
    run $store pinned fanout-5000 fanout --clients 5000 --duration 15s
    run $store pinned throughput throughput --clients 200 --duration 15s
done
run unpinned unpinned latency-5000 latency --clients 5001 --duration 10s
run unpinned unpinned fanout-5000 fanout --clients 5000 --duration 15s
run unpinned unpinned throughput throughput --clients 200 --duration 15s
