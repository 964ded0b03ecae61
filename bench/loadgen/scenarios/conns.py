"""The ``conns`` scenario: open ``--streams`` SSE streams and measure what that costs.

``--devices-per-user`` streams per user ``bench_u{i}``, from many source
addresses, with bounded connect concurrency; every stream waits for its
``event: ready``.  Figures: connect time, failures, the server's RSS and CPU
per stream (``--server-pid``); optionally the streams are held ``--hold``
seconds (to count ``: ping`` comments).  Every other stream scenario starts
with this opening phase (:func:`open_streams`).
"""

import asyncio
import gc
import math

from ..stats import delta, own_cpu_s, per, percentiles


async def open_streams(gen):
    """Open ``--streams`` streams with bounded concurrency and measure the server.

    :param ~bench.loadgen.session.LoadGen gen: the run.
    :returns: the ``conns`` figures.
    :rtype: dict
    """
    args = gen.args
    n = args.streams
    n_users = math.ceil(n / args.devices_per_user)
    requests = [gen.stream_request(u) for u in range(n_users)]
    specs = [(requests[i // args.devices_per_user], i // args.devices_per_user, -1) for i in range(n)]
    rss_before = gen.probe.rss_kb()
    cpu_before = gen.probe.cpu_s()
    own_before = own_cpu_s()
    gen.streams, connect_ms, failures, wall = await gen.connect_many(
        specs, args.connect_concurrency, args.connect_phase_timeout)
    cpu_after = gen.probe.cpu_s()
    own_cpu = own_cpu_s() - own_before
    # Let the server finish whatever the last connects left behind before
    # RSS is read.
    await asyncio.sleep(args.settle)
    rss_after = gen.probe.rss_kb()
    # Every stream's objects live until the end; frozen, they are out of
    # reach of the client's full collections, whose pauses would
    # otherwise show up as server latency.
    gc.collect()
    gc.freeze()
    ready = len(gen.streams)
    out = {
        "streams_requested": n,
        "users": n_users,
        "streams_ready": ready,
        "failures": dict(failures),
        "open_wall_s": wall,
        "streams_per_s": ready / wall if wall else None,
        "connect_ready_ms": percentiles(connect_ms),
        "server_rss_before_kb": rss_before,
        "server_rss_after_kb": rss_after,
        "server_rss_per_stream_kb": per(delta(rss_after, rss_before), n, 1),
        "server_cpu_s": delta(cpu_after, cpu_before),
        "server_cpu_us_per_stream": per(delta(cpu_after, cpu_before), ready),
        "loadgen_cpu_pct": own_cpu * 100 / wall if wall else None,
    }
    gen.result["conns"] = out
    return out


async def hold(gen):
    """Keep the streams open ``--hold`` seconds (``conns`` only).

    :param ~bench.loadgen.session.LoadGen gen: the run.
    """
    if gen.args.hold > 0:
        pings_before = gen.stats.pings
        await asyncio.sleep(gen.args.hold)
        gen.result["conns"]["hold_s"] = gen.args.hold
        gen.result["conns"]["pings_during_hold"] = gen.stats.pings - pings_before
