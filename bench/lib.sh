# Shared by the benchmark scripts (run_core.sh, soak.sh, calibrate.sh):
# placement, and starting, watching and stopping one target server.
# Source it after setting `here` (this folder); it sets `root` and `py`.

root=$(dirname "$here")
py=$root/.venv/bin/python

# server.py's write budgets, on but never refusing: the benchmarks publish
# as fast as the server stores with few tokens, which the defaults (200
# publishes, 20 other writes a second per principal) would refuse; a limiter
# that is on still costs its spend on every request, as in production.
budget_args=(--publish-rate 1000000 --write-rate 1000000)

# refuse_taken_port PORT: exit if something already answers /health there
# (a benchmark against a server left over from another run measures that).
refuse_taken_port() {
    if curl -fsS --max-time 1 "http://127.0.0.1:$1/health" >/dev/null 2>&1; then
        echo "something already answers on port $1; stop it or pass --port" >&2
        exit 1
    fi
}

# Server on CPU 0, load on CPU 1, so neither steals the other's core (when
# there are two cores and taskset).
server_pin=()
client_pin=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    server_pin=(taskset -c 0)
    client_pin=(taskset -c 1)
fi

# start_server LOG ARGV...: start ARGV (relative to the project folder) on
# CPU 0 with 20,000 descriptors; sets server_pid to the server itself (exec
# keeps the pid, which the load generator's --server-pid reads).
start_server() {
    local log=$1
    shift
    (
        ulimit -n 20000
        cd "$root"
        exec "${server_pin[@]}" "$@"
    ) >"$log" 2>&1 &
    server_pid=$!
}

# wait_healthy PORT LOG: until /health answers (30 s at most); exit with the
# log's tail if the server exits or never answers.
wait_healthy() {
    local health=http://127.0.0.1:$1/health
    for _ in $(seq 150); do
        curl -fsS --max-time 1 "$health" >/dev/null 2>&1 && return 0
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "server exited during start-up; its log:" >&2
            tail -n 40 "$2" >&2
            exit 1
        fi
        sleep 0.2
    done
    curl -fsS --max-time 1 "$health" >/dev/null && return 0
    echo "no /health after 30 s" >&2
    tail -n 40 "$2" >&2
    exit 1
}

# stop_server: SIGTERM, then SIGKILL after 15 s; prints how it ended.
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

# count_tracebacks LOG: print the log's size and its first traceback, if
# any; returns 1 when there is one.
count_tracebacks() {
    local tracebacks
    tracebacks=$(grep -c Traceback "$1" || true)
    echo "server log: $(wc -l <"$1") lines, $tracebacks tracebacks"
    ((tracebacks == 0)) && return 0
    grep -m1 -A 20 Traceback "$1"
    return 1
}
