"""Monitoring routes: stats, health, Prometheus metrics, the API description."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST

from core.domain.auth import require_admin
from core.domain.errors import BadRequest
from handlers.call import Answer, Call
from handlers.openapi import openapi_json

#: How long /health waits for the database before calling it down.
HEALTH_TIMEOUT = 2.0


async def stats(call: Call) -> Answer:
    """``GET /api/v1/stats``: counters of this process (or the cluster), without user ids.

    An admin may ask for ``detail=users`` (which names them).
    """
    scope = call.query_argument("scope")
    if scope is None:
        scope = "instance"
    detail = call.query_argument("detail")
    if scope not in ("instance", "cluster"):
        raise BadRequest("scope must be instance or cluster", code="invalid_query")
    if detail not in (None, "users"):
        raise BadRequest("detail must be users", code="invalid_query")
    deps = call.deps
    counters = deps.manager.get_stats()
    if scope == "cluster":
        counters = _sum_instances(await deps.broker.instances())
    elif deps.loop_lag is not None:
        counters["loopLagMs"] = deps.loop_lag.summary()
    if detail == "users":
        # A credential is required here: none at all is 401, not 403.
        require_admin(await call.principal())
        counters["users"] = deps.manager.user_device_counts()
    return Answer.json(counters)


def _sum_instances(instances: list[dict]) -> dict:
    """Totals over instances, with the list of them under ``instances``.

    A heartbeat written by another version may lack a key: it counts as 0.
    """
    total: dict = {"instances": instances}
    for key in (
        "activeUsers",
        "totalDevices",
        "eventsPublished",
        "framesSent",
        "connectionsOpened",
        "connectionsDropped",
    ):
        total[key] = sum(_number(instance.get(key)) for instance in instances)
    for key in ("maxDevicesPerUser", "deviceLimitPerUser", "uptimeSeconds"):
        total[key] = max((_number(instance.get(key)) for instance in instances), default=0)
    total["instanceId"] = instances[0].get("instanceId") if instances else None
    return total


def _number(value: object) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


async def sse_health(call: Call) -> Answer:
    """``GET /health/sse``: the stream manager's view."""
    return Answer.json({"healthy": True, "connections": call.deps.manager.get_stats()})


async def health(call: Call) -> Answer:
    """``GET /health``: 200 when the database and broker answer, else 503 naming what is down."""
    deps = call.deps
    try:
        database = await asyncio.wait_for(deps.service.check_database(), HEALTH_TIMEOUT)
    except TimeoutError:
        database = False
    checks = {
        "database": "ok" if database else "down",
        "broker": "ok" if deps.broker.healthy() else "down",
    }
    healthy = all(value == "ok" for value in checks.values())
    return Answer.json({"status": "ok" if healthy else "unavailable", "checks": checks}, 200 if healthy else 503)


async def metrics(call: Call) -> Answer:
    """``GET /metrics``: every metric of this process, in Prometheus text format."""
    return Answer(200, call.deps.metrics.exposition(), {"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(call: Call) -> Answer:
    """``GET /api/v1/openapi.json``: the API description, no credential needed."""
    return Answer(200, openapi_json())
