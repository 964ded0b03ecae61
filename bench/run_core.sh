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
. "$here/lib.sh"
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

refuse_taken_port "$port"
if [[ $target == server ]]; then
    [[ -f $root/server.py ]] || { echo "no $root/server.py yet; try --floor" >&2; exit 1; }
    server_cmd=("$py" server.py "${budget_args[@]}")
else
    server_cmd=("$py" bench/floor.py)
fi

tmp=$(mktemp -d)
secret=$("$py" -c 'import secrets; print(secrets.token_hex(32))')
mkdir -p "$here/results"
out=$here/results/core-$target-$(date +%Y%m%d-%H%M%S).json

start_server "$tmp/server.log" "${server_cmd[@]}" --port "$port" \
    --db-url "sqlite:///$tmp/bench.db" --jwt-secret "$secret" --keepalive-interval 3600 "${extra[@]}"
cleanup() {
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT
wait_healthy "$port" "$tmp/server.log"
echo "$target pid $server_pid on 127.0.0.1:$port; $streams streams, $rate/s for $duration s"

rc=0
(cd "$root" && "${client_pin[@]}" "$py" -m bench.loadgen peruser --port "$port" --jwt-secret "$secret" \
    --streams "$streams" --devices-per-user 3 --rate "$rate" --duration "$duration" \
    --server-pid "$server_pid" --json "$out") || rc=$?

trap - EXIT
stop_server
count_tracebacks "$tmp/server.log" || true
rm -rf "$tmp"
echo "results: $out"
exit "$rc"
