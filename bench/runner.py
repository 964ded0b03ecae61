#!/usr/bin/env python3
"""The benchmark suite: every scenario against the server and the
floor, one table of figures against the targets, a JSON file and a chart.

Run it through ``bench/run`` (``--quick`` or the full mode); see
docs/PERFORMANCE.md for the method.

Each run starts a fresh process (the server with a fresh SQLite file, a
random secret, ``--keepalive-interval 3600``, or ``bench/floor.py``) pinned
to CPU 0 with ``ulimit -n 20000``, drives it with ``bench/loadgen/``
pinned to CPU 1, and stops it with SIGTERM.  Runs alternate server / floor
at each size, so the two are measured under the same conditions.

Plan (full / quick):

* sweep: ``peruser broadcast`` at N streams (3 devices per user) for N in
  2,000 / 6,000 / 18,000 (quick: 1,000 / 3,000): RSS per stream from the
  opening phase, per-user latency at 1,000 notifications/s, broadcast
  rounds;
* ``create``: closed loop at 16, 64, 256 connections (quick: 64), no streams;
* ``replay-storm``: 10,000 clients (quick: 2,000), 10 events behind; the
  server only (the floor keeps no history).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FD_LIMIT = 20000

PLANS = {
    "full": {
        "sweep": [2000, 6000, 18000],
        "rate": 1000, "duration": 20, "bcast_rounds": 5, "bcast_warmup": 1,
        "create_concurrency": "16,64,256", "create_duration": 10, "create_warmup": 2,
        "storm": 10000, "behind": 10, "timeout": 900,
    },
    "quick": {
        "sweep": [1000, 3000],
        "rate": 1000, "duration": 5, "bcast_rounds": 3, "bcast_warmup": 1,
        "create_concurrency": "64", "create_duration": 5, "create_warmup": 1,
        "storm": 2000, "behind": 10, "timeout": 120,
    },
}

#: The targets.  ``kind``: ``max``/``min`` compare the server's
#: figure, ``ratio`` compares server / floor.
TARGETS = {
    "streams_ready": ("min_all", None, "all N ready"),
    "rss_kb": ("max", 10.0, "<= 10 KB"),
    "bcast_cpu": ("ratio", 1.5, "<= 1.5x floor"),
    "bcast_p99": ("ratio", 1.5, "<= 1.5x floor"),
    "peruser_rate": ("min_frac", 0.95, ">= 95% of the rate"),
    "peruser_p99": ("max", 5.0, "<= 5 ms"),
    "peruser_cpu": ("ratio", 5.0, "<= 5x floor"),
    "create_rate": ("min", 4000.0, ">= 4,000/s"),
    "create_lag_p99": ("max", 10.0, "<= 10 ms"),
    "storm_time": ("max", 10.0, "<= 10 s"),
    "storm_exact": ("zero", None, "0 / 0"),
}


def _pins():
    """``taskset`` prefixes for the server (CPU 0) and the load (CPU 1), if possible."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    return [], []


def _raise_fds():
    """In the child before exec: the server needs a descriptor per stream."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, max(hard, FD_LIMIT)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))


def _answers(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _port_taken(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Target:
    """One server or floor process for one run.

    :param str kind: ``server`` or ``floor``.
    :param int port: listen port.
    :param str log_path: its output goes there.
    :param str scratch: a directory for its database (a fresh file each time).
    :param list extra: more arguments for ``server.py``.
    """

    def __init__(self, kind, port, log_path, scratch, extra):
        self.kind = kind
        self.port = port
        self.secret = secrets.token_hex(32)
        self.log_path = log_path
        self._db = os.path.join(scratch, "bench-%s.db" % secrets.token_hex(4))
        self._extra = extra
        self.proc = None

    def start(self, pin):
        """Start the process and wait for ``/health``.

        :raises RuntimeError: it exited or did not answer within 30 s.
        """
        py = sys.executable
        if self.kind == "server":
            cmd = [py, "server.py", "--db-url", "sqlite:///" + self._db, "--log-level", "warning",
                   # The write budgets on but never refusing: the load
                   # publishes faster than the default 200 a second per
                   # principal, and a limiter that is on still costs its
                   # spend on every request.
                   "--publish-rate", "1000000", "--write-rate", "1000000"]
            cmd += list(self._extra)
        else:
            cmd = [py, os.path.join("bench", "floor.py")]
        cmd += ["--port", str(self.port), "--jwt-secret", self.secret, "--keepalive-interval", "3600"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 (open while the server runs; stop() closes it)
        self.proc = subprocess.Popen(pin + cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_raise_fds)
        deadline = time.monotonic() + 30
        while not _answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited during start-up (code %s); see %s"
                                   % (self.kind, self.proc.returncode, self.log_path))
            if time.monotonic() > deadline:
                raise RuntimeError("%s gave no /health within 30 s" % self.kind)
            time.sleep(0.1)

    def stop(self):
        """SIGTERM, up to 15 s, then SIGKILL; :returns: ``{"exit", "stop_s", "tracebacks"}``."""
        if self.proc is None:
            return {}
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        with open(self.log_path, errors="replace") as f:
            tracebacks = f.read().count("Traceback")
        return {"exit": self.proc.returncode, "stop_s": round(time.monotonic() - started, 2),
                "tracebacks": tracebacks, "log": self.log_path}


def run_loadgen(target, scenarios, options, pin, timeout, out_dir, label):
    """Run the load generator (``python -m bench.loadgen``) against a started target.

    :returns: ``{"label", "kind", "scenarios", "exit", "result", ...}``.
    """
    json_path = os.path.join(out_dir, "%s.json" % label)
    # cwd=ROOT below puts the repository root on the path for -m.
    cmd = [*pin, sys.executable, "-m", "bench.loadgen", *scenarios,
           "--port", str(target.port), "--jwt-secret", target.secret,
           "--server-pid", str(target.proc.pid), "--json", json_path, *options]
    err_path = os.path.join(out_dir, "%s.stderr" % label)
    print("\n== %s: %s %s" % (label, target.kind, " ".join(scenarios)), flush=True)
    started = time.monotonic()
    with open(err_path, "w") as err:
        try:
            # The load generator's own table goes straight to the terminal.
            code = subprocess.run(cmd, cwd=ROOT, timeout=timeout, stderr=err).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if code != 0:
        with open(err_path, errors="replace") as f:
            tail = f.read()[-2000:]
        if tail.strip():
            print("   loadgen stderr (%s):\n%s" % (err_path, tail), flush=True)
    result = None
    if os.path.exists(json_path):
        with open(json_path) as f:
            result = json.load(f)
    return {"label": label, "kind": target.kind, "scenarios": scenarios, "exit": code,
            "wall_s": round(time.monotonic() - started, 1), "result": result}


def one_run(kind, scenarios, options, args, plan, dirs, label, pins):
    """Start a target, run the load generator once, stop the target.

    :param tuple dirs: ``(results directory, scratch directory)``.
    """
    out_dir, scratch = dirs
    target = Target(kind, args.port, os.path.join(out_dir, "%s.log" % label), scratch, args.server_arg)
    loadavg = os.getloadavg()[0]
    try:
        target.start(pins[0])
    except RuntimeError as exc:
        target.stop()
        print("== %s: %s" % (label, exc), flush=True)
        return {"label": label, "kind": kind, "scenarios": scenarios, "exit": "start failed",
                "error": str(exc), "result": None, "loadavg_before": loadavg}
    try:
        run = run_loadgen(target, scenarios, options, pins[1], plan["timeout"], out_dir, label)
    finally:
        stopped = target.stop()
    run["target"] = stopped
    run["loadavg_before"] = loadavg
    if stopped.get("tracebacks"):
        print("   %s log has %d traceback(s): %s" % (kind, stopped["tracebacks"], stopped["log"]), flush=True)
    return run


def _get(run, *path):
    value = run and run.get("result")
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _ratio(a, b):
    return a / b if a is not None and b else None


def _verdict(key, value, floor):
    kind, limit, _ = TARGETS[key]
    if kind == "ratio":
        r = _ratio(value, floor)
        return None if r is None else r <= limit
    if value is None:
        return None
    if kind == "max":
        return value <= limit
    if kind == "min":
        return value >= limit
    return bool(value)


def summarise(runs, plan, mode):
    """The rows of the targets table and of the sweep table.

    :returns: ``(target rows, sweep rows)``; a target row is a dict with
        ``metric, server, floor, ratio, target, pass``.
    """
    # "sweep-3000-server" -> ("server", "3000"); "create-floor" -> ("floor", "create").
    by = {(r["kind"], r["label"].split("-")[1] if r["label"].startswith("sweep-") else r["label"].split("-")[0]): r
          for r in runs}
    n_max = max(plan["sweep"])
    srv = by.get(("server", str(n_max)))
    flr = by.get(("floor", str(n_max)))
    rows = []

    def add(key, metric, s, f, fmt, ok=None):
        _, _, text = TARGETS[key]
        verdict = ok if ok is not None else _verdict(key, s, f)
        rows.append({"key": key, "metric": metric, "server": s, "floor": f, "ratio": _ratio(s, f),
                     "target": text, "pass": verdict, "fmt": fmt})

    ready = _get(srv, "conns", "streams_ready")
    add("streams_ready", "streams ready at N=%d" % n_max, ready, _get(flr, "conns", "streams_ready"), "d",
        ok=None if ready is None else ready == n_max)
    add("rss_kb", "RSS per stream, KB (N=%d)" % n_max, _get(srv, "conns", "server_rss_per_stream_kb"),
        _get(flr, "conns", "server_rss_per_stream_kb"), ".2f")
    add("bcast_cpu", "broadcast CPU us/delivery (N=%d)" % n_max,
        _get(srv, "broadcast", "server_cpu_us_per_delivery"), _get(flr, "broadcast", "server_cpu_us_per_delivery"),
        ".1f")
    add("bcast_p99", "broadcast p99 ms (N=%d)" % n_max, _get(srv, "broadcast", "latency_ms", "p99"),
        _get(flr, "broadcast", "latency_ms", "p99"), ".1f")
    rows.append({"key": "bcast_rate", "metric": "broadcast deliveries/s, median round",
                 "server": _get(srv, "broadcast", "deliveries_per_s_median"),
                 "floor": _get(flr, "broadcast", "deliveries_per_s_median"), "target": "", "pass": None,
                 "fmt": ".0f"})
    rows[-1]["ratio"] = _ratio(rows[-1]["server"], rows[-1]["floor"])
    rate = plan["rate"]
    achieved = _get(srv, "peruser", "achieved_rate")
    add("peruser_rate", "per-user notifications/s achieved (asked %d)" % rate, achieved,
        _get(flr, "peruser", "achieved_rate"), ".0f",
        ok=None if achieved is None else achieved >= TARGETS["peruser_rate"][1] * rate)
    for pct in ("p50", "max"):
        rows.append({"key": "peruser_" + pct, "metric": "per-user %s ms" % pct,
                     "server": _get(srv, "peruser", "latency_ms", pct),
                     "floor": _get(flr, "peruser", "latency_ms", pct), "target": "", "pass": None, "fmt": ".2f"})
        rows[-1]["ratio"] = _ratio(rows[-1]["server"], rows[-1]["floor"])
    add("peruser_p99", "per-user p99 ms (N=%d, %d/s)" % (n_max, rate), _get(srv, "peruser", "latency_ms", "p99"),
        _get(flr, "peruser", "latency_ms", "p99"), ".2f")
    add("peruser_cpu", "per-user CPU us/publish", _get(srv, "peruser", "server_cpu_us_per_publish"),
        _get(flr, "peruser", "server_cpu_us_per_publish"), ".0f")
    csrv, cflr = by.get(("server", "create")), by.get(("floor", "create"))
    add("create_rate", "create: stored/s (best step)", _get(csrv, "create", "stored_per_s"),
        _get(cflr, "create", "stored_per_s"), ".0f")
    # No target: the floor's figure is how fast this machine is, the one to
    # compare when two runs (two machines, two days) disagree.
    rows.append({"key": "create_cpu", "metric": "create: server CPU us/request (floor: this machine's speed)",
                 "server": _get(csrv, "create", "server_cpu_us_per_create"),
                 "floor": _get(cflr, "create", "server_cpu_us_per_create"), "target": "", "pass": None,
                 "fmt": ".0f"})
    rows[-1]["ratio"] = _ratio(rows[-1]["server"], rows[-1]["floor"])
    lag = _get(csrv, "create", "loop_lag") or {}
    lag_le = lag.get("p99_le_ms")
    add("create_lag_p99", "create: IOLoop lag p99 ms (bucket bound)", lag_le, None, "g",
        ok=None if not lag else (lag_le is not None and lag_le <= TARGETS["create_lag_p99"][1]))
    storm = by.get(("server", "storm"))
    rs = _get(storm, "replay_storm") or {}
    add("storm_time", "replay-storm: all %s caught up, s" % (rs.get("clients") or plan["storm"]),
        rs.get("all_caught_up_s"), None, ".2f",
        ok=None if not rs else bool(rs.get("within_10s")))
    exact = None if not rs or "error" in rs else (rs["streams_with_gap"], rs["streams_with_duplicate"])
    rows.append({"key": "storm_exact", "metric": "replay-storm: streams with gap / duplicate",
                 "server": "%d / %d" % exact if exact else None, "floor": None, "ratio": None,
                 "target": TARGETS["storm_exact"][2],
                 "pass": None if exact is None else (exact == (0, 0) and not rs.get("resets")
                                                     and not rs.get("streams_out_of_order")),
                 "fmt": "s"})

    sweep = []
    for n in plan["sweep"]:
        s, f = by.get(("server", str(n))), by.get(("floor", str(n)))
        sweep.append({
            "streams": n,
            "rss_kb": (_get(s, "conns", "server_rss_per_stream_kb"), _get(f, "conns", "server_rss_per_stream_kb")),
            "cpu_us_per_stream": (_get(s, "conns", "server_cpu_us_per_stream"),
                                  _get(f, "conns", "server_cpu_us_per_stream")),
            "peruser_p99": (_get(s, "peruser", "latency_ms", "p99"), _get(f, "peruser", "latency_ms", "p99")),
            "peruser_rate": (_get(s, "peruser", "achieved_rate"), _get(f, "peruser", "achieved_rate")),
            "bcast_p99": (_get(s, "broadcast", "latency_ms", "p99"), _get(f, "broadcast", "latency_ms", "p99")),
            "bcast_cpu": (_get(s, "broadcast", "server_cpu_us_per_delivery"),
                          _get(f, "broadcast", "server_cpu_us_per_delivery")),
        })
    return rows, sweep


def _f(value, fmt):
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return format(value, fmt)


def render(rows, sweep, runs, mode, plan):
    """The tables as Markdown (readable in a terminal, pasteable into docs)."""
    out = ["| metric | server | floor | server/floor | target | pass |", "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r["pass"]] if r["target"] else ""
        ratio = "" if r["floor"] is None else _f(r["ratio"], ".2f") + ("x" if r["ratio"] is not None else "")
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            r["metric"], _f(r["server"], r["fmt"]), _f(r["floor"], r["fmt"]), ratio, r["target"], verdict))
    out += ["", "| streams | RSS KB/stream | CPU us/stream opened | per-user p99 ms | per-user achieved/s "
            "| broadcast p99 ms | broadcast us/delivery |", "|---|---|---|---|---|---|---|"]
    for s in sweep:
        out.append("| %d | %s | %s | %s | %s | %s | %s |" % (
            s["streams"], _pair(s["rss_kb"], ".2f"), _pair(s["cpu_us_per_stream"], ".0f"),
            _pair(s["peruser_p99"], ".2f"), _pair(s["peruser_rate"], ".0f"), _pair(s["bcast_p99"], ".1f"),
            _pair(s["bcast_cpu"], ".1f")))
    out.append("(pairs are server / floor)")
    problems = ["%s (%s): %s" % (r["label"], r["kind"], r.get("error") or "exit %s" % r["exit"])
                for r in runs if r["exit"] != 0]
    problems += ["%s (%s): %d traceback(s) in %s" % (r["label"], r["kind"], r["target"]["tracebacks"],
                                                      r["target"]["log"])
                 for r in runs if (r.get("target") or {}).get("tracebacks")]
    if problems:
        out += ["", "Incomplete runs (something lost, refused or failed; see the output above):"]
        out += ["- " + p for p in problems]
    if mode == "quick":
        out += ["", "Quick mode: N=%d, not 18,000; storm %d clients, not 10,000; %s s windows. "
                "PASS/FAIL is indicative only." % (max(plan["sweep"]), plan["storm"], plan["duration"])]
    return "\n".join(out)


def _pair(pair, fmt):
    return "%s / %s" % (_f(pair[0], fmt), _f(pair[1], fmt))


def chart(sweep, path, title, rate):
    """Latency p99 and RSS per stream against the number of streams, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [s["streams"] for s in sweep]
    fig, (lat, mem) = plt.subplots(1, 2, figsize=(11, 4.2))

    def line(ax, key, who, label, style):
        points = [(n, s[key][who]) for n, s in zip(ns, sweep, strict=True) if s[key][who] is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)

    line(lat, "peruser_p99", 0, "per-user p99, server", "o-C0")
    line(lat, "peruser_p99", 1, "per-user p99, floor", "o--C0")
    line(lat, "bcast_p99", 0, "broadcast p99, server", "s-C1")
    line(lat, "bcast_p99", 1, "broadcast p99, floor", "s--C1")
    lat.axhline(5.0, color="C3", linewidth=0.8, linestyle=":", label="per-user target 5 ms")
    lat.set_yscale("log")
    lat.set_xlabel("open streams (3 per user)")
    lat.set_ylabel("latency p99, ms (log)")
    lat.set_title("Latency (per-user at %d notifications/s)" % rate)
    lat.grid(True, which="both", alpha=0.3)
    lat.legend(fontsize=8)
    line(mem, "rss_kb", 0, "server", "o-C0")
    line(mem, "rss_kb", 1, "floor", "o--C0")
    mem.axhline(10.0, color="C3", linewidth=0.8, linestyle=":", label="target 10 KB")
    mem.set_xlabel("open streams (3 per user)")
    mem.set_ylabel("RSS per stream, KB")
    mem.set_ylim(bottom=0)
    mem.set_title("Memory")
    mem.grid(True, alpha=0.3)
    mem.legend(fontsize=8)
    for ax in (lat, mem):
        ax.set_xticks(ns)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine():
    """What the figures were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        import tornado
        tornado_version = tornado.version
    except ImportError:
        tornado_version = None
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "tornado": tornado_version,
            "loadavg_start": os.getloadavg()}


def parse_args(argv=None):
    """Parse the command line."""
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    ap.add_argument("--port", type=int, default=8890, help="listen port of each target")
    ap.add_argument("--only", action="append", choices=("sweep", "create", "storm"),
                    help="run only these parts (repeatable)")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor runs")
    ap.add_argument("--sweep", help="comma-separated stream counts instead of the plan's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one figure of the plan, e.g. --set rate=2000 --set storm=5000 "
                         "(keys: %s)" % ", ".join(k for k in PLANS["full"] if k != "sweep"))
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for server.py (repeatable), e.g. --server-arg=--log-level=info")
    ap.add_argument("--chart", metavar="PNG", help="where to write the chart (default: next to the JSON); "
                    "docs/perf-chart.png for the documentation")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    return ap.parse_args(argv)


def main(argv=None):
    """Run the plan; :returns: 0 when every run completed without loss, else 1."""
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = dict(PLANS[mode])
    if args.sweep:
        plan["sweep"] = [int(n) for n in args.sweep.split(",")]
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in plan or key == "sweep":
            sys.exit("--set: unknown key %r" % key)
        plan[key] = type(plan[key])(value)
    parts = set(args.only or ("sweep", "create", "storm"))
    if _port_taken(args.port):
        sys.exit("something already listens on port %d; stop it or pass --port" % args.port)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    os.makedirs(args.out, exist_ok=True)
    run_dir = os.path.join(args.out, "run-%s-%s" % (mode, stamp))
    os.makedirs(run_dir)
    pins = _pins()
    kinds = ["server"] if args.no_floor else ["server", "floor"]
    info = machine()
    started = time.monotonic()
    runs = []
    common = ["--devices-per-user", "3", "--bcast-warmup", str(plan["bcast_warmup"])]
    with tempfile.TemporaryDirectory(prefix="bench-", dir=run_dir) as scratch:
        if "sweep" in parts:
            for n in plan["sweep"]:
                for kind in kinds:
                    runs.append(one_run(kind, ["peruser", "broadcast"], [
                        *common, "--streams", str(n), "--rate", str(plan["rate"]), "--duration", str(plan["duration"]),
                        "--bcast-rounds", str(plan["bcast_rounds"]), "--publishers", "32"],
                        args, plan, (run_dir, scratch), "sweep-%d-%s" % (n, kind), pins))
        if "create" in parts:
            for kind in kinds:
                runs.append(one_run(kind, ["create"], [
                    *common, "--streams", "0", "--create-concurrency", plan["create_concurrency"],
                    "--duration", str(plan["create_duration"]), "--create-warmup", str(plan["create_warmup"])],
                    args, plan, (run_dir, scratch), "create-%s" % kind, pins))
        if "storm" in parts:
            # The floor keeps no history: nothing to replay.
            runs.append(one_run("server", ["replay-storm"], [
                *common, "--streams", str(plan["storm"]), "--replay-behind", str(plan["behind"])],
                args, plan, (run_dir, scratch), "storm-server", pins))
    rows, sweep = summarise(runs, plan, mode)
    table = render(rows, sweep, runs, mode, plan)
    wall = time.monotonic() - started
    info["loadavg_end"] = os.getloadavg()
    doc = {"mode": mode, "started": stamp, "wall_s": round(wall, 1), "plan": plan, "machine": info,
           "pins": {"server": " ".join(pins[0]) or None, "loadgen": " ".join(pins[1]) or None},
           "server_args": args.server_arg, "targets": rows, "sweep": sweep, "runs": runs, "table": table}
    json_path = run_dir + ".json"
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=2)
    chart_path = args.chart or run_dir + ".png"
    if "sweep" in parts:
        chart(sweep, chart_path, "%s mode, %s, %d CPUs (%s), server on CPU 0, load on CPU 1"
              % (mode, stamp, info["cpus"], info["cpu_model"] or "?"), plan["rate"])
    print("\n" + table)
    print("\n%s mode in %.0f s; load average %.2f at start, %.2f at end" % (
        mode, wall, info["loadavg_start"][0], info["loadavg_end"][0]))
    print("results: %s (per-run JSON and logs in %s)" % (json_path, run_dir))
    if "sweep" in parts:
        print("chart: %s" % chart_path)
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
