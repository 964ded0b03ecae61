"""The ``peruser`` scenario: notifications to random users, open loop.

``--rate`` notifications per second for ``--duration`` seconds through
``POST /api/v1/users/{u}/notifications`` on ``--publishers`` keep-alive
connections, each to a random user with streams.  Figures: the latency
distribution (receipt minus the send stamp in ``data.t``), deliveries
expected vs received, server CPU per publish and per delivery.
"""

import asyncio
import collections
import random
import time

from ..clients import NOTIFY_PATH, failure_reason, notification_body
from ..stats import delta, own_cpu_s, per, percentiles


async def run(gen):
    """Publish open-loop at ``--rate`` for ``--duration`` s to random users.

    :param ~bench.loadgen.session.LoadGen gen: the run.
    :returns: the ``peruser`` figures.
    :rtype: dict
    """
    args = gen.args
    stats = gen.stats
    rng = random.Random(args.seed)
    devices = gen.devices()
    users = sorted(devices)
    pool = [gen.client(args.publish_port) for _ in range(args.publishers)]
    await asyncio.gather(*(p.connect() for p in pool))
    idle = asyncio.Queue()
    for p in pool:
        idle.put_nowait(p)
    statuses = collections.Counter()
    errors = collections.Counter()
    expected = 0
    total = round(args.rate * args.duration)

    async def publish(pub, user_idx):
        nonlocal expected
        try:
            status = await pub.post(NOTIFY_PATH % gen.user(user_idx), notification_body)
        except Exception as exc:  # counted, and the run goes on
            errors[failure_reason(exc)] += 1
        else:
            statuses[status] += 1
            if status == 201:
                expected += devices[user_idx]
        finally:
            idle.put_nowait(pub)

    received_before = stats.deliveries
    regressions_before = stats.id_regressions
    del stats.latencies_ms[:]
    cpu_before = gen.probe.cpu_s()
    own_before = own_cpu_s()
    stats.recording = True
    # time.monotonic, not loop.time: uvloop's clock ticks in whole
    # milliseconds, too coarse for a schedule 0.5 ms apart at 2000/s.
    clock = time.monotonic
    started = clock()
    tasks = []
    late = 0
    max_lag = 0.0
    for i in range(total if users else 0):
        delay = started + i / args.rate - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle.empty():
            # Open loop wants the send now; every connection is busy, so it
            # goes out late.  Counted so a saturated pool is visible.
            late += 1
        pub = await idle.get()
        max_lag = max(max_lag, clock() - (started + i / args.rate))
        tasks.append(asyncio.create_task(publish(pub, rng.choice(users))))
    send_wall = clock() - started
    await asyncio.gather(*tasks)
    await gen.wait_for(lambda: stats.deliveries - received_before >= expected, args.drain, 0.01)
    stats.recording = False
    wall = clock() - started
    cpu_after = gen.probe.cpu_s()
    own_cpu = own_cpu_s() - own_before
    for p in pool:
        p.close()
    created = statuses.get(201, 0)
    received = stats.deliveries - received_before
    server_cpu = delta(cpu_after, cpu_before)
    out = {
        "streams": len(gen.streams),
        "rate": args.rate,
        "duration_s": args.duration,
        "publishes_sent": len(tasks),
        "publishes_201": created,
        "non_201": {str(k): v for k, v in statuses.items() if k != 201},
        "publish_errors": dict(errors),
        "late_sends": late,
        "max_send_lag_ms": max_lag * 1e3,
        "achieved_rate": len(tasks) / send_wall if send_wall else None,
        "deliveries_expected": expected,
        "deliveries_received": received,
        "id_regressions": stats.id_regressions - regressions_before,
        "latency_ms": percentiles(stats.latencies_ms),
        "window_wall_s": wall,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_publish": per(server_cpu, created),
        "server_cpu_us_per_delivery": per(server_cpu, received),
        "loadgen_cpu_pct": own_cpu * 100 / wall if wall else None,
    }
    gen.result["peruser"] = out
    return out
