"""Prometheus metrics, read from the live counters at scrape time.

Nothing is counted twice: the collector turns the SSE manager's own
counters into metric families when ``/metrics`` is scraped, so the hot
path pays nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from core.runtime.looplag import LoopLagMonitor
from core.streams.manager import StreamManager
from core.transport.http1 import HTTPCounters


class _StreamCollector:
    """Exposes one process's stream counters."""

    def __init__(self, manager: StreamManager, http: HTTPCounters, loop_lag: LoopLagMonitor | None) -> None:
        self._manager = manager
        self._http = http
        self._loop_lag = loop_lag

    def collect(self) -> Iterator[Metric]:
        """One sample per counter, labelled with the instance id."""
        stats = self._manager.get_stats()
        instance = stats["instanceId"]
        gauges = (
            ("notify_active_users", "Users with at least one open stream", stats["activeUsers"]),
            ("notify_open_streams", "Open SSE streams", stats["totalDevices"]),
            (
                "notify_requests_in_flight",
                "HTTP requests being served (a stream until it is handed over)",
                self._http.in_flight,
            ),
            ("notify_uptime_seconds", "Seconds since the process started", stats["uptimeSeconds"]),
        )
        for name, help_text, value in gauges:
            family = GaugeMetricFamily(name, help_text, labels=["instance"])
            family.add_metric([instance], value)
            yield family
        counters = (
            ("notify_events_published", "Events handed to the SSE manager", stats["eventsPublished"]),
            ("notify_frames_sent", "Frames written to streams, pings included", stats["framesSent"]),
            ("notify_connections_opened", "Streams opened", stats["connectionsOpened"]),
            ("notify_connections_dropped", "Streams closed for not reading", stats["connectionsDropped"]),
            (
                "notify_requests_refused",
                "Requests refused by the HTTP layer (malformed, bad Host)",
                self._http.requests_refused,
            ),
            (
                "notify_connections_refused",
                "Connections refused with 503 past --max-connections",
                self._http.connections_refused,
            ),
            ("notify_accept_pauses", "Times accepting paused for lack of file descriptors", self._http.accept_pauses),
        )
        for name, help_text, value in counters:
            counter = CounterMetricFamily(name, help_text, labels=["instance"])
            counter.add_metric([instance], value)
            yield counter
        if self._loop_lag is not None:
            lag = HistogramMetricFamily(
                "notify_loop_lag_seconds", "How late the IOLoop ran a timer due every 50 ms", labels=["instance"]
            )
            buckets = [
                ("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in self._loop_lag.buckets()
            ]
            lag.add_metric([instance], buckets, sum_value=self._loop_lag.total)
            yield lag


class Metrics:
    """A registry of this application's own (tests build many apps)."""

    def __init__(self, manager: StreamManager, http: HTTPCounters, loop_lag: LoopLagMonitor | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StreamCollector(manager, http, loop_lag))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
