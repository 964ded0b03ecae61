#!/usr/bin/env bash
# Soak (issue 6): hold N streams for D seconds under connection churn, sample
# the server's RSS every 10 s, then close everything and wait for the stats
# to come back to zero.  Verdict: RSS drift after warm-up < 5%, stats back
# to zero, no failure.  See bench/soak.py and docs/PERFORMANCE.md.
#
# Usage: bench/soak.sh [--smoke] [--port P] [-- SOAK_ARGS...]
#   default   10,000 streams, 1,800 s, 100 connects + 100 disconnects a second,
#             warm-up 300 s (about 35 minutes in all)
#   --smoke   1,000 streams, 60 s, 20/s, warm-up 20 s, a sample every 5 s
#   --port P  listen port (default 8888)
#   after --   more arguments for bench/soak.py (they win: --streams 5000 ...)
# The server runs as bench/run runs it: a fresh SQLite file, a random secret,
# --log-level warning, pinned to CPU 0 with ulimit -n 20000; the soak client
# is pinned to CPU 1.  The server keeps its default --keepalive-interval (30 s),
# so pings flow during the soak.
# Results: the table on stdout and bench/results/soak-<time>.json (every sample).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
py=$root/.venv/bin/python
port=8888
preset=()
extra=()
while (($#)); do
    case $1 in
        --smoke) preset=(--streams 1000 --duration 60 --churn 20 --warmup 20 --sample-interval 5) ;;
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

server_pin=()
client_pin=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    server_pin=(taskset -c 0)
    client_pin=(taskset -c 1)
fi

tmp=$(mktemp -d)
secret=$("$py" -c 'import secrets; print(secrets.token_hex(32))')
mkdir -p "$here/results"
out=$here/results/soak-$(date +%Y%m%d-%H%M%S).json

# exec keeps the pid: $! is the server process itself, which --server-pid reads.
(
    ulimit -n 20000
    cd "$root"
    exec "${server_pin[@]}" "$py" server.py --port "$port" --db-url "sqlite:///$tmp/soak.db" \
        --jwt-secret "$secret" --log-level warning
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
echo "server pid $server_pid on 127.0.0.1:$port; soak ${preset[*]:-(defaults)} ${extra[*]:-}"

rc=0
(
    ulimit -n 20000
    exec "${client_pin[@]}" "$py" "$here/soak.py" --port "$port" --jwt-secret "$secret" \
        --server-pid "$server_pid" --json "$out" "${preset[@]}" "${extra[@]}"
) || rc=$?

trap - EXIT
stop_server
tracebacks=$(grep -c Traceback "$tmp/server.log" || true)
echo "server log: $(wc -l <"$tmp/server.log") lines, $tracebacks tracebacks"
((tracebacks == 0)) || { grep -m1 -A 20 Traceback "$tmp/server.log"; rc=1; }
rm -rf "$tmp"
echo "results: $out"
exit "$rc"
