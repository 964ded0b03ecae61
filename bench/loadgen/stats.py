"""Figures: the counters the streams update, percentiles, the server's and the
load generator's own CPU and memory, and the server's loop-lag histogram.
"""

import array
import collections
import math
import os
import re
import resource

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LAG_BUCKET = re.compile(rb'^notify_loop_lag_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\}\s+(\S+)', re.M)


class Stats:
    """Counters shared by every stream of one run.

    :ivar int deliveries: notification frames received with a readable ``data.t``.
    :ivar array.array latencies_ms: notification receipt minus send time,
        while ``recording``.
    :ivar int bcast_deliveries: ``bench.bcast`` events received.
    :ivar array.array bcast_latencies_ms: their receipt minus send time,
        while ``recording``.
    :ivar int bcast_last_ns: receipt time of the latest ``bench.bcast``.
    :ivar int marked: streams that received their ``bench.mark``.
    :ivar int caught_up: streams that received every expected ``bench.replay``.
    :ivar int pings: ``: ping`` comments received.
    :ivar collections.Counter events: other named events, by name.
    :ivar int id_regressions: frames whose ``id:`` was not above the previous
        one on the same stream (duplicates or reordering).
    :ivar int bad_payloads: frames of the benchmark without the expected data.
    :ivar int open: streams currently connected.
    :ivar int closed_early: streams that ended before the load generator closed them.
    """

    def __init__(self):
        self.deliveries = 0
        self.latencies_ms = array.array("d")
        self.bcast_deliveries = 0
        self.bcast_latencies_ms = array.array("d")
        self.bcast_last_ns = 0
        self.marked = 0
        self.caught_up = 0
        self.recording = False
        self.pings = 0
        self.events = collections.Counter()
        self.id_regressions = 0
        self.bad_payloads = 0
        self.open = 0
        self.closed_early = 0


class ServerProbe:
    """Reads a server process's RSS and CPU time from ``/proc``.

    :param pid: the server's pid, or ``None`` to report nothing.
    """

    def __init__(self, pid):
        self.pid = pid
        self._schedstat = os.path.exists("/proc/self/schedstat")

    def rss_kb(self):
        """:returns: VmRSS in KB, or ``None`` without a readable pid."""
        if self.pid is None:
            return None
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_s(self):
        """:returns: CPU seconds used by the process, or ``None`` without a readable pid.

        The sum of every thread's ``schedstat`` run time (nanoseconds) when
        the kernel has it, else ``utime + stime`` from ``stat`` (whole ticks,
        10 ms, too coarse for one broadcast round of a few thousand
        deliveries).  Threads of the server live as long as it does; one
        that ended inside a window would be missed by the first method.
        """
        if self.pid is None:
            return None
        if self._schedstat:
            try:
                tasks = os.listdir("/proc/%d/task" % self.pid)
            except OSError:
                return None
            total = 0
            for task in tasks:
                try:
                    with open("/proc/%d/task/%s/schedstat" % (self.pid, task)) as f:
                        total += int(f.read().split()[0])
                except OSError:
                    pass  # the thread ended between the listing and the read
            return total / 1e9
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                stat = f.read()
        except OSError:
            return None
        # The command name may contain spaces; the fields after it do not.
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def own_cpu_s():
    """:returns: CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def delta(after, before):
    """:returns: ``after - before``, or ``None`` when either reading is missing."""
    return after - before if after is not None and before is not None else None


def per(amount, count, scale=1e6):
    """:returns: ``amount * scale / count`` (micro-units per item by default),
        or ``None`` without an amount or a count.
    """
    return amount * scale / count if amount is not None and count else None


def percentiles(values):
    """Summarise a sample with nearest-rank percentiles.

    :param values: iterable of floats.
    :returns: ``{"count", "p50", "p90", "p99", "max"}``; the figures are
        ``None`` for an empty sample.
    :rtype: dict
    """
    ordered = sorted(values)
    n = len(ordered)
    out = {"count": n}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        out[name] = ordered[max(0, math.ceil(q * n) - 1)] if n else None
    out["max"] = ordered[-1] if n else None
    return out


def lag_buckets(metrics_text):
    """Read the cumulative ``notify_loop_lag_seconds`` histogram from ``/metrics``.

    :param bytes metrics_text: the Prometheus exposition.
    :returns: ``[(upper bound s, cumulative count), ...]`` sorted, or ``None``
        when the server exposes no such histogram.
    """
    pairs = [(math.inf if le == b"+Inf" else float(le), float(count))
             for le, count in _LAG_BUCKET.findall(metrics_text)]
    return sorted(pairs) or None


def lag_window(before, after):
    """Percentiles of the loop lag between two scrapes of the histogram.

    :param before: :func:`lag_buckets` at the window's start.
    :param after: :func:`lag_buckets` at its end.
    :returns: ``{"samples", "p50_ms", "p99_ms", "p50_le_ms", "p99_le_ms",
        "max_le_ms"}``:
        ``p*_ms`` interpolated linearly inside the bucket (as Prometheus's
        ``histogram_quantile`` does), ``p*_le_ms`` the bucket's upper bound
        (``p99_le_ms <= 10`` proves ``p99 <= 10 ms``; ``None`` above the
        last bound); the whole result is ``None`` without data.
    """
    if not before or not after or len(before) != len(after):
        return None
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    out = {"samples": int(total), "max_le_ms": None}
    below = 0.0
    for bound, cumulative in counts:
        if cumulative > below:
            # The bucket of the largest sample in the window.
            out["max_le_ms"] = None if math.isinf(bound) else bound * 1e3
        below = cumulative
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        if not total:
            out[name + "_ms"] = out[name + "_le_ms"] = None
            continue
        rank = q * total
        lower, below = 0.0, 0.0
        for bound, cumulative in counts:
            if cumulative >= rank:
                if math.isinf(bound):
                    value = lower  # beyond the last bound: report that bound
                else:
                    inside = cumulative - below
                    value = lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
                out[name + "_ms"] = value * 1e3
                # None: beyond the last finite bucket (JSON has no infinity).
                out[name + "_le_ms"] = None if math.isinf(bound) else bound * 1e3
                break
            lower, below = bound, cumulative
    return out
