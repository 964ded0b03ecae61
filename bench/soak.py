#!/usr/bin/env python3
"""Soak: hold many streams for a long time under connection churn, and watch
the server's memory.

A leak that costs a few hundred bytes per connection opened, or per event
sent, is invisible in a 20-second benchmark and fatal after a week.  This
holds ``--streams`` streams (``--devices-per-user`` per user) for
``--duration`` seconds while ``--churn`` random streams a second are closed
and as many opened again (for the same users, so the population stays
constant), with ``--rate`` notifications a second to random users on top,
and samples the server's RSS (``/proc/<--server-pid>/status``) and its
``GET /api/v1/stats`` every ``--sample-interval`` seconds.  At the end it
closes every stream and polls the stats until ``totalDevices`` and
``activeUsers`` are both 0: a server that forgets nothing it should forget.

The verdict:

* **RSS drift** after warm-up: (largest RSS sampled in the last third of
  the run - RSS at the end of ``--warmup``) / RSS at the end of warm-up,
  under ``--max-drift-pct`` (5%).  Warm-up is excluded because the first
  minutes fill caches (verified tokens, the allocator's arenas, SQLite's page
  cache) that then stay flat; growth after that is what a leak looks like.
  The slope over the post-warm-up samples (KiB per minute) is reported too.
* the stats back to zero after the close (within ``--drain-timeout`` s);
* no failure: every connect reached ``ready``, no stream ended that the
  soak did not close, no cursor went backwards, every publish was stored.

Streams, requests and parsing come from ``bench/loadgen/``.  Run it through
``bench/soak.sh`` (server pinned to CPU 0, like ``bench/run``); see
docs/PERFORMANCE.md, "Method: soak".

Example (the smoke size; the defaults are 10,000 streams for 30 minutes)::

    .venv/bin/python bench/soak.py --streams 1000 --duration 60 --churn 20 --warmup 20 \\
        --sample-interval 5 --jwt-secret S --server-pid 1234 --json soak.json
"""

import argparse
import asyncio
import collections
import json
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# These need the repository root on the path (the line above).
from bench.loadgen.cli import event_loop_runner, raise_fd_limit
from bench.loadgen.clients import NOTIFY_PATH, failure_reason, notification_body
from bench.loadgen.report import fmt
from bench.loadgen.scenarios.conns import open_streams
from bench.loadgen.session import LoadGen

#: Seconds between churn steps; each closes and opens its share of ``--churn``.
TICK = 0.1


def _drift(samples, warmup, duration):
    """The RSS verdict from the samples.

    :param list samples: dicts with ``t`` (seconds since the churn started)
        and ``rss_kb``.
    :param float warmup: seconds excluded at the start.
    :param float duration: length of the run.
    :returns: ``{"warmup_rss_kb", "last_third_max_rss_kb", "drift_pct",
        "slope_kb_per_min"}`` (``None`` figures without enough samples).
    :rtype: dict
    """
    with_rss = [s for s in samples if s.get("rss_kb") is not None]
    after = [s for s in with_rss if s["t"] >= warmup]
    last_third = [s for s in with_rss if s["t"] >= duration * 2 / 3]
    out = {"warmup_rss_kb": None, "last_third_max_rss_kb": None, "drift_pct": None, "slope_kb_per_min": None}
    if not after or not last_third:
        return out
    base = after[0]["rss_kb"]
    peak = max(s["rss_kb"] for s in last_third)
    out.update(warmup_rss_kb=base, last_third_max_rss_kb=peak, drift_pct=(peak - base) * 100.0 / base)
    if len(after) >= 2:
        # Least squares over the post-warm-up samples.
        n = len(after)
        mean_t = sum(s["t"] for s in after) / n
        mean_r = sum(s["rss_kb"] for s in after) / n
        var = sum((s["t"] - mean_t) ** 2 for s in after)
        if var:
            cov = sum((s["t"] - mean_t) * (s["rss_kb"] - mean_r) for s in after)
            out["slope_kb_per_min"] = cov / var * 60.0
    return out


class Soak(LoadGen):
    """One soak run on top of the load generator's streams and clients.

    :param argparse.Namespace args: parsed command line (see :func:`parse_args`).
    """

    def __init__(self, args):
        super().__init__(args)
        self.rng = random.Random(args.seed)
        self.samples = []
        self.closed_by_churn = 0
        self.opened_by_churn = 0
        self.connect_failures = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.publish_statuses = collections.Counter()
        self.publish_errors = collections.Counter()
        self._tasks = set()
        self._stats_client = None

    async def soak(self):
        """Open the streams, churn and sample for ``--duration`` s, close, wait for zero.

        :returns: the result document.
        :rtype: dict
        """
        args = self.args
        self._stats_client = self.client()
        try:
            conns = await open_streams(self)
            self.connect_failures.update(conns["failures"])
            publisher = asyncio.create_task(self._publish())
            started = time.monotonic()
            await self._sample(0.0)
            next_sample = args.sample_interval
            churned = 0
            while True:
                elapsed = time.monotonic() - started
                if elapsed >= args.duration:
                    break
                due = int(args.churn * elapsed)
                if due > churned:
                    self._churn(due - churned)
                    churned = due
                if elapsed >= next_sample:
                    await self._sample(elapsed)
                    next_sample += args.sample_interval
                await asyncio.sleep(TICK)
            await self._sample(time.monotonic() - started)
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            wall = time.monotonic() - started
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.close_all()
        zero_s = await self._wait_for_zero()
        rss_end = self.probe.rss_kb()
        self._stats_client.close()
        self.result["soak"] = self._figures(wall, zero_s, rss_end)
        return self.result

    def _churn(self, count):
        """Close ``count`` random streams and open as many for the same users."""
        count = min(count, len(self.streams))
        specs = []
        for _ in range(count):
            index = self.rng.randrange(len(self.streams))
            # Swap-remove: order does not matter, and this is O(1).
            stream = self.streams[index]
            self.streams[index] = self.streams[-1]
            self.streams.pop()
            stream.close()
            self.closed_by_churn += 1
            specs.append((self.stream_request(stream.user_idx), stream.user_idx, -1))
        if specs:
            task = asyncio.create_task(self._reopen(specs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reopen(self, specs):
        self.in_flight += len(specs)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            streams, _, failures, _ = await self.connect_many(specs, len(specs), self.args.connect_timeout)
        finally:
            self.in_flight -= len(specs)
        self.streams.extend(streams)
        self.opened_by_churn += len(streams)
        self.connect_failures.update(failures)

    async def _publish(self):
        """``--rate`` notifications a second to random users with streams, one keep-alive connection."""
        rate = self.args.rate
        if rate <= 0:
            return
        client = self.client()
        users = sorted({s.user_idx for s in self.streams})
        started = time.monotonic()
        sent = 0
        try:
            while True:
                delay = started + sent / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent += 1
                try:
                    status = await client.post(NOTIFY_PATH % self.user(self.rng.choice(users)), notification_body)
                except Exception as exc:  # counted; the soak goes on
                    self.publish_errors[failure_reason(exc)] += 1
                else:
                    self.publish_statuses[status] += 1
        finally:
            client.close()

    async def _server_stats(self):
        """The server's ``GET /api/v1/stats``, or ``None`` if it did not answer."""
        try:
            status, body = await self._stats_client.get_body("/api/v1/stats")
        except Exception:
            return None
        if status != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    async def _sample(self, elapsed):
        stats = await self._server_stats() or {}
        self.samples.append({
            "t": round(elapsed, 1),
            "rss_kb": self.probe.rss_kb(),
            "cpu_s": self.probe.cpu_s(),
            "devices": stats.get("totalDevices"),
            "users": stats.get("activeUsers"),
            "streams_open_here": self.stats.open,
            "connect_in_flight": self.in_flight,
        })

    async def _wait_for_zero(self):
        """Poll the stats until no device and no user is left; :returns: seconds taken, or None."""
        started = time.monotonic()
        while time.monotonic() - started < self.args.drain_timeout:
            stats = await self._server_stats()
            if stats is not None and stats.get("totalDevices") == 0 and stats.get("activeUsers") == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        return None

    def _figures(self, wall, zero_s, rss_end):
        args = self.args
        drift = _drift(self.samples, args.warmup, args.duration)
        created = self.publish_statuses.get(201, 0)
        out = {
            "streams": args.streams,
            "duration_s": args.duration,
            "wall_s": wall,
            "warmup_s": args.warmup,
            "churn_per_s": args.churn,
            "closed_by_churn": self.closed_by_churn,
            "opened_by_churn": self.opened_by_churn,
            "achieved_churn_per_s": self.opened_by_churn / wall if wall else None,
            "max_connects_in_flight": self.max_in_flight,
            "connect_failures": dict(self.connect_failures),
            "closed_early": self.stats.closed_early,
            "id_regressions": self.stats.id_regressions,
            "bad_payloads": self.stats.bad_payloads,
            "pings_received": self.stats.pings,
            "publishes_201": created,
            "publish_non_201": {str(k): v for k, v in self.publish_statuses.items() if k != 201},
            "publish_errors": dict(self.publish_errors),
            "deliveries_received": self.stats.deliveries,
            "rss_end_kb": rss_end,
            "stats_zero_after_s": zero_s,
            "stats_back_to_zero": zero_s is not None,
            "max_drift_pct": args.max_drift_pct,
            "samples": self.samples,
        }
        out.update(drift)
        out["failures"] = (sum(self.connect_failures.values()) + self.stats.closed_early + self.stats.id_regressions
                           + self.stats.bad_payloads + sum(out["publish_non_201"].values())
                           + sum(self.publish_errors.values()))
        out["drift_ok"] = out["drift_pct"] is not None and out["drift_pct"] < args.max_drift_pct
        out["passed"] = out["drift_ok"] and out["stats_back_to_zero"] and out["failures"] == 0
        return out


def render(result):
    """The soak figures as a small table.

    :param dict result: what :meth:`Soak.soak` returned.
    :rtype: str
    """
    s = result["soak"]
    c = result.get("conns", {})
    rows = [
        ("streams", "%d held (%d ready at the start in %s s), %d users"
         % (s["streams"], c.get("streams_ready", 0), fmt(c.get("open_wall_s"), ".1f"), c.get("users", 0))),
        ("run", "%s s (warm-up %s s), churn %s/s asked, %s/s achieved (%d closed, %d opened; at most %d connects in flight)"
         % (fmt(s["wall_s"], ".0f"), fmt(s["warmup_s"], "g"), fmt(s["churn_per_s"], "g"),
            fmt(s["achieved_churn_per_s"], ".1f"), s["closed_by_churn"], s["opened_by_churn"],
            s["max_connects_in_flight"])),
        ("publishes", "%d stored, non-201 %s, errors %s; %d deliveries, %d pings received"
         % (s["publishes_201"], json.dumps(s["publish_non_201"]) if s["publish_non_201"] else "0",
            json.dumps(s["publish_errors"]) if s["publish_errors"] else "0", s["deliveries_received"],
            s["pings_received"])),
        ("server RSS", "%s KiB after warm-up, %s KiB max in the last third, %s KiB after the close"
         % (fmt(s["warmup_rss_kb"], "d"), fmt(s["last_third_max_rss_kb"], "d"), fmt(s["rss_end_kb"], "d"))),
        ("RSS drift", "%s%% (target < %s%%): %s; slope %s KiB/min after warm-up"
         % (fmt(s["drift_pct"], ".2f"), fmt(s["max_drift_pct"], "g"), "ok" if s["drift_ok"] else "FAIL",
            fmt(s["slope_kb_per_min"], ".1f"))),
        ("stats after close", "totalDevices 0 and activeUsers 0 after %s s" % fmt(s["stats_zero_after_s"], ".1f")
         if s["stats_back_to_zero"] else "NOT back to zero within the drain timeout"),
        ("failures", "%d (connects %s, closed early %d, cursor regressions %d, bad payloads %d)"
         % (s["failures"], json.dumps(s["connect_failures"]) if s["connect_failures"] else "0", s["closed_early"],
            s["id_regressions"], s["bad_payloads"])),
        ("verdict", "PASS" if s["passed"] else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join("%-*s  %s" % (width, k, v) for k, v in rows)


def parse_args(argv=None):
    """Parse the command line.

    :param list argv: arguments, default ``sys.argv[1:]``.
    :rtype: argparse.Namespace
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="server address (loopback only)")
    ap.add_argument("--port", type=int, default=8888)
    ap.add_argument("--jwt-secret", required=True, help="the server's HS256 secret")
    ap.add_argument("--streams", "-n", type=int, default=10000, help="SSE streams held")
    ap.add_argument("--devices-per-user", type=int, default=3)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of churn after the streams are open")
    ap.add_argument("--churn", type=float, default=100.0,
                    help="streams closed and as many opened per second (random ones, same users)")
    ap.add_argument("--rate", type=float, default=10.0, help="notifications per second to random users (0: none)")
    ap.add_argument("--warmup", type=float, default=300.0, help="seconds excluded from the RSS drift")
    ap.add_argument("--sample-interval", type=float, default=10.0, help="seconds between RSS and stats samples")
    ap.add_argument("--max-drift-pct", type=float, default=5.0, help="the RSS drift target")
    ap.add_argument("--drain-timeout", type=float, default=60.0,
                    help="seconds for the stats to reach zero after everything is closed")
    ap.add_argument("--connect-concurrency", type=int, default=200, help="connects in flight while opening")
    ap.add_argument("--connect-timeout", type=float, default=30.0, help="seconds for one stream to reach ready")
    ap.add_argument("--connect-phase-timeout", type=float, default=300.0,
                    help="no stream of the opening phase is started after this many seconds")
    ap.add_argument("--source-ips", type=int, default=8, help="spread streams over 127.0.0.2 .. 127.0.0.(1+K)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between the last ready and the first RSS reading")
    ap.add_argument("--request-timeout", type=float, default=10.0, help="per API request")
    ap.add_argument("--seed", type=int, default=1, help="churn and user choice seed")
    ap.add_argument("--server-pid", type=int, help="read RSS and CPU of this process (no drift verdict without it)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure and sample to FILE")
    ap.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = ap.parse_args(argv)
    if not args.host.startswith("127."):
        ap.error("--host must be a loopback address (127.0.0.0/8)")
    if min(args.streams, args.devices_per_user, args.connect_concurrency, args.source_ips) < 1 \
            or args.duration <= 0 or args.churn < 0 or args.rate < 0 or args.sample_interval <= 0:
        ap.error("counts, --duration and --sample-interval must be positive")
    if not 0 <= args.warmup <= args.duration * 2 / 3:
        ap.error("--warmup must end before the last third of --duration")
    # What LoadGen reads: tokens must outlive the run, or streams would end
    # with token-expired (counted as failures).
    args.jwt_ttl = int(args.duration + args.warmup + 3600)
    args.publish_port = None
    args.scenario = ["soak"]
    return args


def main(argv=None):
    """Entry point.

    :returns: 0 when the soak passed, 1 otherwise.
    :rtype: int
    """
    args = parse_args(argv)
    raise_fd_limit(args.streams + math.ceil(args.churn * 30) + 64)
    runner = event_loop_runner(args)
    result = runner(Soak(args).soak())
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["soak"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
