"""Monitoring: stats, health, Prometheus metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST

from core.domain.auth import require_admin
from core.domain.errors import BadRequest
from handlers.base import BaseHandler

#: How long /health waits for the database before calling it down.
HEALTH_TIMEOUT = 2.0


class StatsHandler(BaseHandler):
    """``GET /api/v1/stats``: counters of this process (or the cluster)."""

    async def get(self) -> None:
        """Stats without user ids, unless an admin asks for ``detail=users``."""
        scope = self.get_query_argument("scope", "instance")
        detail = self.get_query_argument("detail", None)
        if scope not in ("instance", "cluster"):
            raise BadRequest("scope must be instance or cluster", code="invalid_query")
        if detail not in (None, "users"):
            raise BadRequest("detail must be users", code="invalid_query")
        manager = self.deps.manager
        stats = manager.get_stats()
        if scope == "cluster":
            stats = _sum_instances(await self.deps.broker.instances())
        elif self.deps.loop_lag is not None:
            stats["loopLagMs"] = self.deps.loop_lag.summary()
        if detail == "users":
            # A credential is required here: none at all is 401, not 403.
            require_admin(await self.authenticate())
            stats["users"] = manager.user_device_counts()
        self.send_json(stats)


def _sum_instances(instances: list[dict]) -> dict:
    """Totals over instances, with the list of them under ``instances``.

    A heartbeat written by another version may lack a key: it counts as 0.
    """
    total: dict = {"instances": instances}
    for key in ("activeUsers", "totalDevices", "eventsPublished", "framesSent", "connectionsOpened", "connectionsDropped"):
        total[key] = sum(_number(instance.get(key)) for instance in instances)
    for key in ("maxDevicesPerUser", "deviceLimitPerUser", "uptimeSeconds"):
        total[key] = max((_number(instance.get(key)) for instance in instances), default=0)
    total["instanceId"] = instances[0].get("instanceId") if instances else None
    return total


def _number(value: object) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


class SSEHealthHandler(BaseHandler):
    """``GET /health/sse``: the stream manager's view."""

    def get(self) -> None:
        """Healthy, with the connection stats."""
        self.send_json({"healthy": True, "connections": self.deps.manager.get_stats()})


class HealthHandler(BaseHandler):
    """``GET /health``: 200 when the database and broker answer, else 503."""

    async def get(self) -> None:
        """Check each dependency and name what is down."""
        try:
            database = await asyncio.wait_for(self.deps.service.check_database(), HEALTH_TIMEOUT)
        except asyncio.TimeoutError:
            database = False
        checks = {
            "database": "ok" if database else "down",
            "broker": "ok" if self.deps.broker.healthy() else "down",
        }
        healthy = all(value == "ok" for value in checks.values())
        self.send_json({"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503)


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text format."""

    def get(self) -> None:
        """Every metric of this process."""
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.deps.metrics.exposition())
