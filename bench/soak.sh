#!/usr/bin/env bash
# Soak: hold N streams for D seconds under connection churn, sample
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
. "$here/lib.sh"
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

refuse_taken_port "$port"
tmp=$(mktemp -d)
secret=$("$py" -c 'import secrets; print(secrets.token_hex(32))')
mkdir -p "$here/results"
out=$here/results/soak-$(date +%Y%m%d-%H%M%S).json

start_server "$tmp/server.log" "$py" server.py --port "$port" --db-url "sqlite:///$tmp/soak.db" \
    --jwt-secret "$secret" --log-level warning "${budget_args[@]}"
cleanup() {
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT
wait_healthy "$port" "$tmp/server.log"
echo "server pid $server_pid on 127.0.0.1:$port; soak ${preset[*]:-(defaults)} ${extra[*]:-}"

rc=0
(
    ulimit -n 20000
    exec "${client_pin[@]}" "$py" "$here/soak.py" --port "$port" --jwt-secret "$secret" \
        --server-pid "$server_pid" --json "$out" "${preset[@]}" "${extra[@]}"
) || rc=$?

trap - EXIT
stop_server
count_tracebacks "$tmp/server.log" || rc=1
rm -rf "$tmp"
echo "results: $out"
exit "$rc"
