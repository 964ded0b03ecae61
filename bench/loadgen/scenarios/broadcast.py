"""The ``broadcast`` scenario: one event to every user with streams, in rounds.

``--bcast-rounds`` rounds (after ``--bcast-warmup`` unmeasured ones) of
one event to every user with streams, through ``POST /api/v1/events`` (the
contract takes at most 1,000 ``userIds`` per request, so a round is
``ceil(users / --event-batch)`` requests sent at once on as many
connections).  Figures: deliveries/s, server CPU per delivery and latency,
per round and overall.
"""

import array
import asyncio
import statistics
import time

from ..clients import BCAST_EVENT, publish_event
from ..stats import delta, own_cpu_s, per, percentiles


async def run(gen):
    """Rounds of one ``bench.bcast`` event to every user with streams.

    :param ~bench.loadgen.session.LoadGen gen: the run.
    :returns: the ``broadcast`` figures.
    :rtype: dict
    """
    args = gen.args
    stats = gen.stats
    devices = gen.devices()
    batches = gen.user_batches(sorted(devices))
    expected = sum(devices.values())
    clients = [gen.client() for _ in batches]
    await asyncio.gather(*(c.connect() for c in clients))
    regressions_before = stats.id_regressions
    rounds = []
    all_latencies = array.array("d")
    own_before = own_cpu_s()
    wall_started = time.monotonic()
    for r in range(args.bcast_warmup + args.bcast_rounds):
        await asyncio.sleep(args.bcast_pause)
        before = stats.bcast_deliveries
        del stats.bcast_latencies_ms[:]
        stats.recording = True
        cpu_before = gen.probe.cpu_s()
        sent_ns = time.monotonic_ns()
        statuses = await publish_event(
            clients, batches, BCAST_EVENT, lambda r=r: b'{"t":%d,"r":%d}' % (time.monotonic_ns(), r))
        complete = await gen.wait_for(lambda before=before: stats.bcast_deliveries - before >= expected,
                                      args.bcast_timeout)
        cpu_after = gen.probe.cpu_s()
        stats.recording = False
        received = stats.bcast_deliveries - before
        wall_s = (stats.bcast_last_ns - sent_ns) / 1e9 if received else None
        server_cpu = delta(cpu_after, cpu_before)
        warmup = r < args.bcast_warmup
        rounds.append({
            "round": r,
            "warmup": warmup,
            "requests": {str(k): v for k, v in statuses.items()},
            "deliveries_expected": expected,
            "deliveries_received": received,
            "complete": complete,
            "wall_ms": wall_s * 1e3 if wall_s else None,
            "deliveries_per_s": received / wall_s if wall_s else None,
            "server_cpu_s": server_cpu,
            "server_cpu_us_per_delivery": per(server_cpu, received),
            "latency_ms": percentiles(stats.bcast_latencies_ms),
        })
        if not warmup:
            all_latencies.extend(stats.bcast_latencies_ms)
    own_cpu = own_cpu_s() - own_before
    wall = time.monotonic() - wall_started
    for c in clients:
        c.close()
    measured = [x for x in rounds if not x["warmup"]]
    cpu_total = sum(x["server_cpu_s"] for x in measured) if all(
        x["server_cpu_s"] is not None for x in measured) else None
    delivered = sum(x["deliveries_received"] for x in measured)
    rates = [x["deliveries_per_s"] for x in measured if x["deliveries_per_s"]]
    per_delivery = [x["server_cpu_us_per_delivery"] for x in measured
                    if x["server_cpu_us_per_delivery"] is not None]
    out = {
        "streams": len(gen.streams),
        "users": len(devices),
        "requests_per_round": len(batches),
        "warmup_rounds": args.bcast_warmup,
        "rounds_measured": len(measured),
        "deliveries_expected": expected * len(measured),
        "deliveries_received": delivered,
        "all_delivered": all(x["deliveries_received"] == expected for x in measured),
        "all_accepted": all(set(x["requests"]) == {"202"} for x in rounds),
        "id_regressions": stats.id_regressions - regressions_before,
        "deliveries_per_s_median": statistics.median(rates) if rates else None,
        "server_cpu_us_per_delivery": per(cpu_total, delivered),
        "server_cpu_us_per_delivery_best_round": min(per_delivery) if per_delivery else None,
        "latency_ms": percentiles(all_latencies),
        "loadgen_cpu_pct": own_cpu * 100 / wall if wall else None,
        "rounds": rounds,
    }
    gen.result["broadcast"] = out
    return out
