#!/usr/bin/env bash
# Calibration: what each HTTP layer costs per request on this machine.
#
# Runs the `create` scenario (closed loop, keep-alive connections posting
# notifications) against, in turn: bench/floor.py (raw asyncio), the
# smallest Tornado servers of bench/bare_tornado.py on each layer (Tornado's
# HTTPServer with a RequestHandler or a bare delegate; core/transport/http1.py with
# the same two), and the product (server.py, SQLite).  Server on CPU 0, load
# generator on CPU 1, one server at a time, a fresh database each.
#
# Usage: bench/calibrate.sh [--concurrency C] [--duration S] [--port P]
#   defaults: 64 connections, 8 s windows (after a 2 s warm-up), port 8899
# Results: a table on stdout; JSON per server in bench/results/calibrate-<time>/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
concurrency=64
duration=8
port=8899
while (($#)); do
    case $1 in
        --concurrency) concurrency=$2; shift ;;
        --duration) duration=$2; shift ;;
        --port) port=$2; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

refuse_taken_port "$port"
out=$here/results/calibrate-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
secret=$("$py" -c 'import secrets; print(secrets.token_hex(32))')

# name|command (each also gets --port, --db-url, --jwt-secret; the bench
# servers ignore the last two)
servers=(
    "floor|bench/floor.py"
    "tornado-handler|bench/bare_tornado.py --layer handler"
    "tornado-delegate|bench/bare_tornado.py --layer delegate"
    "http1-handler|bench/bare_tornado.py --layer lean-handler"
    "http1-delegate|bench/bare_tornado.py --layer lean"
    "product|server.py ${budget_args[*]}"
)

for entry in "${servers[@]}"; do
    name=${entry%%|*}
    read -r -a cmd <<<"${entry#*|}"
    rm -f "$out/calib.db"*
    start_server "$out/$name.log" "$py" "${cmd[@]}" --port "$port" --db-url "sqlite:///$out/calib.db" \
        --jwt-secret "$secret" --keepalive-interval 3600
    wait_healthy "$port" "$out/$name.log"
    (cd "$root" && "${client_pin[@]}" "$py" -m bench.loadgen create --port "$port" --jwt-secret "$secret" \
        --server-pid "$server_pid" --streams 0 --create-concurrency "$concurrency" --duration "$duration" \
        --json "$out/$name.json" >"$out/$name.out" 2>&1) || echo "$name: load generator failed (see $out/$name.out)" >&2
    stop_server >/dev/null
done

"$py" - "$out" "${servers[@]%%|*}" <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
print("| server | answered/s | server CPU us/request | server CPU % | load generator CPU % |")
print("|---|---|---|---|---|")
for name in names:
    try:
        r = json.load(open(os.path.join(out, name + ".json")))["create"]
    except (OSError, KeyError, ValueError):
        print("| %s | failed | | | |" % name)
        continue
    print("| %s | %.0f | %.0f | %.0f | %.0f |" % (name, r["stored_per_s"], r["server_cpu_us_per_create"] or 0,
                                                r["server_cpu_pct"] or 0, r["loadgen_cpu_pct"] or 0))
print("\nresults: %s" % out)
PY
