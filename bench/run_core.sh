#!/usr/bin/env bash
# Core benchmark: start the server, open N SSE streams (3 devices per user),
# publish to random users at 200/s, print the figures, stop the server with
# SIGTERM.
#
# The conns figures (connect time, RSS and CPU per stream) come from the
# opening phase of the same loadgen run that then publishes, so the streams
# are opened once and RSS is measured on a fresh server.
#
# Usage: bench/run_core.sh [--quick] [--floor] [--port P] [-- SERVER_ARGS...]
#   --quick   N=2000 streams, 10 s of publishing (default N=10000, 20 s)
#   --floor   benchmark bench/floor.py (the raw-asyncio baseline) instead of server.py
#   --port P  listen port (default 8888)
#   after --   extra arguments for the server
# Results: a table on stdout and bench/results/core-<server>-<time>.json.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
py=$root/.venv/bin/python
streams=10000
duration=20
rate=200
port=8888
target=server
extra=()
while (($#)); do
    case $1 in
        --quick) streams=2000; duration=10 ;;
        --floor) target=floor ;;
        --port) port=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

health=http://127.0.0.1:$port/health
if curl -fsS --max-time 1 "$health" >/dev/null 2>&1; then
    echo "something already answers on port $port; stop it or pass --port" >&2
    exit 1
fi

if [[ $target == server ]]; then
    [[ -f $root/server.py ]] || { echo "no $root/server.py yet; try --floor" >&2; exit 1; }
    server_cmd=("$py" server.py)
else
    server_cmd=("$py" bench/floor.py)
fi

# Same placement as the earlier measurements: server on CPU 0, load on CPU 1,
# so neither steals the other's core.
server_pin=()
client_pin=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    server_pin=(taskset -c 0)
    client_pin=(taskset -c 1)
fi

tmp=$(mktemp -d)
secret=$("$py" -c 'import secrets; print(secrets.token_hex(32))')
mkdir -p "$here/results"
out=$here/results/core-$target-$(date +%Y%m%d-%H%M%S).json

# exec keeps the pid: $! is the server process itself, which --server-pid reads.
(
    ulimit -n 20000
    cd "$root"
    exec "${server_pin[@]}" "${server_cmd[@]}" --port "$port" \
        --db-url "sqlite:///$tmp/bench.db" --jwt-secret "$secret" \
        --keepalive-interval 3600 "${extra[@]}"
) >"$tmp/server.log" 2>&1 &
server_pid=$!

stop_server() {
    kill -0 "$server_pid" 2>/dev/null || return 0
    kill -TERM "$server_pid"
    local started=$SECONDS
    while kill -0 "$server_pid" 2>/dev/null && ((SECONDS - started < 15)); do
        sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "server still running 15 s after SIGTERM; killing it" >&2
        kill -KILL "$server_pid"
    fi
    local rc=0
    wait "$server_pid" || rc=$?
    echo "server stopped: exit $rc, $((SECONDS - started)) s after SIGTERM"
}
cleanup() {
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT

for _ in $(seq 150); do
    curl -fsS --max-time 1 "$health" >/dev/null 2>&1 && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "server exited during start-up; its log:" >&2
        tail -n 40 "$tmp/server.log" >&2
        exit 1
    fi
    sleep 0.2
done
curl -fsS --max-time 1 "$health" >/dev/null || { echo "no /health after 30 s" >&2; tail -n 40 "$tmp/server.log" >&2; exit 1; }
echo "$target pid $server_pid on 127.0.0.1:$port; $streams streams, $rate/s for $duration s"

rc=0
"${client_pin[@]}" "$py" "$here/loadgen.py" peruser --port "$port" --jwt-secret "$secret" \
    --streams "$streams" --devices-per-user 3 --rate "$rate" --duration "$duration" \
    --server-pid "$server_pid" --json "$out" || rc=$?

trap - EXIT
stop_server
tracebacks=$(grep -c Traceback "$tmp/server.log" || true)
echo "server log: $(wc -l <"$tmp/server.log") lines, $tracebacks tracebacks"
((tracebacks == 0)) || grep -m1 -A 20 Traceback "$tmp/server.log"
rm -rf "$tmp"
echo "results: $out"
exit "$rc"
