#!/usr/bin/env bash
# Two parlor binaries (or one, twice, under different RUST_LOG) alternated in
# one sitting: per round, `parlor-bench throughput --clients 200` and
# `fanout --clients 2000` against a fresh server of each, SQLite store,
# stderr to a file as a deployment's would be. Server on CPU 0, the tool on
# CPU 1, idle busy loops keeping both awake. One line per run: deliveries
# per server CPU-second and p50 (throughput), last delivery p50 and server
# CPU per delivery (fan-out), and lost+duplicated+out-of-order+errors.
#
# Usage: scripts/ab-throughput.sh OLD_PARLOR NEW_PARLOR PARLOR_BENCH [ROUNDS]
#   LOG=info,parlor::access=off   RUST_LOG of both servers (default info)
#   NOFAN=1                       throughput only
#   OUT=DIR                       where the JSON goes (default a temporary directory)
set -u
old=$1 new=$2 bench=$3 rounds=${4:-3}
out=${OUT:-$(mktemp -d)}; mkdir -p "$out"
for cpu in 0 1; do taskset -c $cpu nice -n 19 sh -c 'while :; do :; done' & busy+=($!); done
trap 'kill ${busy[@]} 2>/dev/null' EXIT
one() {
  local name=$1 bin=$2 scen=$3; shift 3
  local work; work=$(mktemp -d)
  RUST_LOG=${LOG:-info} taskset -c 0 $bin --data-dir $work/data --listen 127.0.0.1:0 --argon2-memory-kib 8 --argon2-iterations 1 \
     --inactivity-timeout 5m --signups-per-ip 0 --send-rate 0 --max-connections-per-ip 0 \
     >$work/out 2>$work/err &
  local pid=$! url=""
  for _ in $(seq 100); do url=$(sed -n 's/^listening on //p' $work/out); [[ -n $url ]] && break; sleep 0.1; done
  taskset -c 1 $bench --url $url --server-pid $pid "$@" --json > $out/$name-$scen-$r.json 2>$work/berr || tail -3 $work/berr
  kill $pid; wait $pid 2>/dev/null
  echo "$name $scen r$r log_lines=$(wc -l < $work/err) $(python3 -c "
import json;d=json.load(open('$out/$name-$scen-$r.json'))
bad=sum(x for x in d['verify'].values() if isinstance(x,int))
if '$scen'=='throughput': print('deliv/cpu-s',d['deliveries_per_server_cpu_s'],'p50us',d['delivery_us']['p50'],'bad',bad)
else: print('last_p50_ms',d['last_ms']['p50'],'cpu_us/delivery',round(d['server_cpu_s']*1e6/d['deliveries'],1),'bad',bad)
")"
  rm -rf $work
}
for r in $(seq $rounds); do
  for pair in "old $old" "new $new"; do
    set -- $pair
    one $1 $2 throughput throughput --clients 200 --duration 8s
    [[ -z ${NOFAN:-} ]] && one $1 $2 fanout fanout --clients 2000 --duration 8s
  done
done
