"""The ``create`` scenario: notifications stored back to back, closed loop.

No streams needed: ``--create-concurrency`` keep-alive connections (a comma
list: one step each) POST notifications back to back for
``--create-warmup`` + ``--duration`` seconds.  The figure is 201 answers per
second over the window, with request latency and the server's IOLoop lag
over the same window (from the ``notify_loop_lag_seconds`` histogram of
``/metrics``, two scrapes diffed; the max from ``loopLagMs`` in
``/api/v1/stats``, polled each second).  The step with the highest rate is
the result.
"""

import array
import asyncio
import collections
import math
import random
import time

from ..clients import NOTIFY_PATH, failure_reason, notification_body, server_stats
from ..stats import delta, lag_buckets, lag_window, own_cpu_s, per, percentiles


async def _scrape_lag(client):
    """:returns: the loop-lag histogram of ``/metrics``, or ``None``."""
    try:
        status, body = await client.get_body("/metrics")
    except Exception:  # the figure is optional; the floor has none
        return None
    return lag_buckets(body) if status == 200 else None


async def run(gen):
    """Closed-loop creates at each ``--create-concurrency``; the best step wins.

    :param ~bench.loadgen.session.LoadGen gen: the run.
    :returns: the ``create`` figures.
    :rtype: dict
    """
    args = gen.args
    steps = []
    for concurrency in args.create_concurrency:
        steps.append(await _step(gen, concurrency))
        await asyncio.sleep(args.bcast_pause)
    best = max(steps, key=lambda s: s["stored_per_s"] or 0)
    out = dict(best)
    out["steps"] = steps
    gen.result["create"] = out
    return out


async def _step(gen, concurrency):
    args = gen.args
    rng = random.Random(args.seed)
    n_users = max(args.create_users, math.ceil(len(gen.streams) / args.devices_per_user))
    paths = [NOTIFY_PATH % gen.user(u) for u in range(n_users)]
    pool = [gen.client() for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in pool))
    monitor = gen.client()
    clock = time.monotonic
    started = clock()
    window_start = started + args.create_warmup
    window_end = window_start + args.duration
    per_second = collections.Counter()
    statuses = collections.Counter()
    errors = collections.Counter()
    latencies = array.array("d")
    stop = False

    async def worker(client):
        while not stop:
            t0 = clock()
            try:
                status = await client.post(rng.choice(paths), notification_body)
            except Exception as exc:  # counted; a short pause avoids a hot loop
                errors[failure_reason(exc)] += 1
                await asyncio.sleep(0.05)
                continue
            t1 = clock()
            if window_start <= t1 < window_end:
                statuses[status] += 1
                latencies.append((t1 - t0) * 1e3)
                if status == 201:
                    per_second[int(t1 - window_start)] += 1

    workers = [asyncio.create_task(worker(c)) for c in pool]
    await asyncio.sleep(max(0.0, window_start - clock()))
    lag_before = await _scrape_lag(monitor)
    cpu_before = gen.probe.cpu_s()
    own_before = own_cpu_s()
    lag_max = None
    while clock() < window_end:
        await asyncio.sleep(min(1.0, max(0.0, window_end - clock())))
        polled = await server_stats(monitor)
        recent = (polled or {}).get("loopLagMs") or {}
        if recent.get("max") is not None:
            lag_max = max(lag_max or 0.0, recent["max"])
    cpu_after = gen.probe.cpu_s()
    own_cpu = own_cpu_s() - own_before
    lag_after = await _scrape_lag(monitor)
    stop = True
    _done, pending = await asyncio.wait(workers, timeout=args.request_timeout + 1)
    for task in pending:
        task.cancel()
    for c in [*pool, monitor]:
        c.close()
    created = statuses.get(201, 0)
    seconds = [per_second.get(i, 0) for i in range(int(args.duration))]
    server_cpu = delta(cpu_after, cpu_before)
    lag = lag_window(lag_before, lag_after)
    if lag is not None:
        lag["max_ms_recent"] = lag_max
    return {
        "concurrency": concurrency,
        "users": n_users,
        "window_s": args.duration,
        "warmup_s": args.create_warmup,
        "stored_201": created,
        "stored_per_s": created / args.duration,
        "per_second_min": min(seconds) if seconds else None,
        "per_second_max": max(seconds) if seconds else None,
        "non_201": {str(k): v for k, v in statuses.items() if k != 201},
        "errors": dict(errors),
        "request_ms": percentiles(latencies),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_create": per(server_cpu, created),
        "server_cpu_pct": server_cpu * 100 / args.duration if server_cpu is not None else None,
        "loop_lag": lag,
        "loadgen_cpu_pct": own_cpu * 100 / args.duration,
    }
