#!/usr/bin/env bash
# Scale-out benchmarks: two server.py processes sharing one Redis (started
# here on its own port) and one PostgreSQL database (created fresh here).
#
# Usage: bench/run_cluster.sh hold  [STREAMS_PER_PROCESS]   (default 18000)
#        bench/run_cluster.sh cross [STREAMS] [RATE] [SECONDS] (default 6000 1000 20)
#   hold   each process gets STREAMS_PER_PROCESS streams from its own
#          loadgen (a process may hold at most 20,000 descriptors), held
#          20 s; prints the cluster stats seen through process A meanwhile.
#   cross  streams on process B, notifications created through process A
#          (loadgen --publish-port): cross-process publish-to-receive latency.
# Needs: redis-server, PostgreSQL at 127.0.0.1:5432 (trust auth).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
py=$root/.venv/bin/python
mode=${1:-hold}
redis_port=6391
port_a=8971
port_b=8972
secret=$("$py" -c 'import secrets; print(secrets.token_hex(32))')
db=bench_cluster
tmp=$(mktemp -d)

psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
redis-server --port $redis_port --save "" --appendonly no --bind 127.0.0.1 --daemonize yes \
    --logfile "$tmp/redis.log" --pidfile "$tmp/redis.pid"
# The write budgets are on but never refuse (as in bench/lib.sh): the load
# publishes faster than the default 200 a second per principal, and a
# limiter that is on still costs its spend on every request.
common=(--db-url "postgresql://postgres@127.0.0.1:5432/$db" --redis-url "redis://127.0.0.1:$redis_port/0"
        --jwt-secret "$secret" --keepalive-interval 3600 --log-level warning
        --publish-rate 1000000 --write-rate 1000000)

start_server() {  # port cpu log
    (ulimit -n 20000; cd "$root"; exec taskset -c "$2" "$py" server.py --port "$1" "${common[@]}") >"$3" 2>&1 &
    echo $!
}
pid_a=$(start_server $port_a 0 "$tmp/a.log")
# One at a time: both would otherwise create the schema at once.
for _ in $(seq 100); do curl -fs "localhost:$port_a/health" >/dev/null && break; sleep 0.2; done
pid_b=$(start_server $port_b 1 "$tmp/b.log")
for _ in $(seq 100); do curl -fs "localhost:$port_b/health" >/dev/null && break; sleep 0.2; done

cleanup() {
    kill -TERM "$pid_a" "$pid_b" 2>/dev/null || true
    wait "$pid_a" "$pid_b" 2>/dev/null || true
    echo "tracebacks in server logs: $(cat "$tmp/a.log" "$tmp/b.log" | grep -c Traceback || true)"
    redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# Run from $root: -m finds bench.loadgen there.
loadgen=("$py" -m bench.loadgen)
case $mode in
    hold)
        per=${2:-18000}
        (ulimit -n 20000; cd "$root"; "${loadgen[@]}" conns --port $port_a --jwt-secret "$secret" --streams "$per" \
            --hold 20 --server-pid "$pid_a" >"$tmp/la.txt" 2>&1) & la=$!
        (ulimit -n 20000; cd "$root"; "${loadgen[@]}" conns --port $port_b --jwt-secret "$secret" --streams "$per" \
            --hold 20 --server-pid "$pid_b" >"$tmp/lb.txt" 2>&1) & lb=$!
        # Sample the cluster view until both loadgens are done; keep the peak.
        peak=0
        while kill -0 $la 2>/dev/null || kill -0 $lb 2>/dev/null; do
            seen=$(curl -fs "localhost:$port_a/api/v1/stats?scope=cluster" |
                "$py" -c 'import json,sys; d=json.load(sys.stdin); print(d["totalDevices"], len(d["instances"]))' || echo "0 0")
            ((${seen% *} > ${peak% *})) && peak=$seen
            sleep 2
        done
        wait $la $lb || true
        echo "== process A"; grep -vi insecure "$tmp/la.txt"
        echo "== process B"; grep -vi insecure "$tmp/lb.txt"
        echo "cluster stats through A at the peak: totalDevices ${peak% *} over ${peak#* } instances"
        ;;
    cross)
        (ulimit -n 20000; cd "$root"; "${loadgen[@]}" peruser --port $port_b --publish-port $port_a --jwt-secret "$secret" \
            --streams "${2:-6000}" --rate "${3:-1000}" --duration "${4:-20}" --publishers 64 \
            --server-pid "$pid_b") 2>&1 | grep -vi insecure
        ;;
    *) echo "unknown mode $mode (hold or cross)" >&2; exit 2 ;;
esac
