"""The ``replay-storm`` scenario: every client reconnects at once, behind.

Mark every stream's cursor with one event, close every stream, publish
``--replay-behind`` events to every user while they are away, then reconnect
them all at once (``--storm-concurrency``) with ``Last-Event-ID`` = the
mark.  Figures: time until every client has all missed events, and a check
of each client's sequence (no gap, no duplicate, in order, no ``reset``).
"""

import array
import asyncio
import collections
import time

from ..clients import MARK_EVENT, REPLAY_EVENT, publish_event, server_stats
from ..stats import delta, own_cpu_s, per, percentiles


async def run(gen):
    """Close every stream, publish while they are away, reconnect all at once.

    :param ~bench.loadgen.session.LoadGen gen: the run.
    :returns: the ``replay_storm`` figures.
    :rtype: dict
    """
    args = gen.args
    stats = gen.stats
    behind = args.replay_behind
    old = gen.streams
    devices = gen.devices()
    batches = gen.user_batches(sorted(devices))
    clients = [gen.client() for _ in batches]
    await asyncio.gather(*(c.connect() for c in clients))
    out = {"clients": len(old), "users": len(devices), "behind": behind}
    gen.result["replay_storm"] = out

    # 1. Every stream learns its cursor, as a live browser would have one.
    marked_before = stats.marked
    statuses = await publish_event(clients, batches, MARK_EVENT, lambda: b"{}")
    out["mark_requests"] = {str(k): v for k, v in statuses.items()}
    if not await gen.wait_for(lambda: stats.marked - marked_before >= len(old), args.bcast_timeout):
        out["error"] = "only %d of %d streams got the mark event" % (stats.marked - marked_before, len(old))
        return out

    # 2. Everyone goes away; the server must have noticed before the
    # reconnects, or the device limit could refuse some of them.
    for s in old:
        s.close()
    await gen.wait_for(lambda: stats.open == 0, 10)
    monitor = gen.client()

    async def server_devices():
        polled = await server_stats(monitor)
        return None if polled is None else polled.get("totalDevices")

    deadline = time.monotonic() + 10
    while (await server_devices() or 0) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    # 3. Events published while they are away, one request per batch and
    # sequence number, in order.
    published = collections.Counter()
    for seq in range(1, behind + 1):
        published.update(await publish_event(clients, batches, REPLAY_EVENT,
                                             lambda seq=seq: b'{"seq":%d}' % seq))
    out["publish_requests"] = {str(k): v for k, v in published.items()}
    for c in clients:
        c.close()

    # 4. The storm: everyone at once, each with its own cursor.
    requests = {}
    specs = []
    for s in old:
        key = (s.user_idx, s.mark_cursor)
        if key not in requests:
            requests[key] = gen.stream_request(s.user_idx, s.mark_cursor)
        specs.append((requests[key], s.user_idx, s.mark_cursor))
    caught_before = stats.caught_up
    cpu_before = gen.probe.cpu_s()
    own_before = own_cpu_s()
    storm_ns = time.monotonic_ns()
    streams, connect_ms, failures, connect_wall = await gen.connect_many(
        specs, args.storm_concurrency or len(specs), args.storm_timeout, expect_replay=behind)
    gen.streams = streams
    await gen.wait_for(lambda: stats.caught_up - caught_before >= len(streams),
                       max(0.0, args.storm_timeout - (time.monotonic_ns() - storm_ns) / 1e9), 0.01)
    all_in_ns = time.monotonic_ns()
    cpu_after = gen.probe.cpu_s()
    # Anything more (a duplicate) would arrive right behind the last event.
    await asyncio.sleep(args.storm_settle)
    own_cpu = own_cpu_s() - own_before

    # 5. Check every client's sequence.
    gaps = dups = disorder = noncontiguous = resets = 0
    catch_up_s = array.array("d")
    for s in streams:
        seqs = [seq for seq, _, _ in s.replayed]
        cursors = [c for _, c, _ in s.replayed]
        if set(range(1, behind + 1)) - set(seqs):
            gaps += 1
        if len(seqs) != len(set(seqs)) or len(cursors) != len(set(cursors)):
            dups += 1
        if seqs != sorted(seqs) or cursors != sorted(cursors):
            disorder += 1
        if s.mark_cursor is not None and cursors != list(range(s.mark_cursor + 1, s.mark_cursor + 1 + len(cursors))):
            noncontiguous += 1
        resets += s.resets
        if s.caught_up_ns is not None:
            catch_up_s.append((s.caught_up_ns - storm_ns) / 1e9)
    caught = len(catch_up_s)
    server_cpu = delta(cpu_after, cpu_before)
    out.update({
        "storm_concurrency": args.storm_concurrency or len(specs),
        "reconnected": len(streams),
        "connect_failures": dict(failures),
        "connect_wall_s": connect_wall,
        "connect_ready_ms": percentiles(connect_ms),
        "caught_up": caught,
        "catch_up_s": percentiles(catch_up_s),
        "all_caught_up_s": (all_in_ns - storm_ns) / 1e9 if caught == len(old) else None,
        "within_10s": caught == len(old) and bool(catch_up_s) and max(catch_up_s) <= 10.0,
        "streams_with_gap": gaps,
        "streams_with_duplicate": dups,
        "streams_out_of_order": disorder,
        "streams_noncontiguous_cursor": noncontiguous,
        "resets": resets,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_client": per(server_cpu, len(streams)),
        "loadgen_cpu_pct": own_cpu * 100 * 1e9 / (time.monotonic_ns() - storm_ns),
    })
    return out
