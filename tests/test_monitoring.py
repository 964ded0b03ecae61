"""Monitoring endpoints, as CONTRACT.md "Monitoring" describes them.

``GET /api/v1/stats`` (public counters of this process, or of the cluster;
user ids only for admins), ``GET /health/sse``, ``GET /health`` (200, or
503 naming what is down) and ``GET /metrics`` (Prometheus text format).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from peewee import OperationalError
from prometheus_client.parser import text_string_to_metric_families

from models import queries
from tests.support.checks import assert_error_body, wait_until

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = pytest.mark.timeout(30)

#: The keys CONTRACT.md promises in the stats of one process.
STATS_KEYS = {
    "activeUsers", "totalDevices", "maxDevicesPerUser", "eventsPublished",
    "framesSent", "connectionsDropped", "uptimeSeconds", "instanceId",
}
#: The stats keys that are counts.
COUNT_KEYS = STATS_KEYS - {"uptimeSeconds", "instanceId"}


def assert_stats_shape(stats: dict[str, Any]) -> None:
    """Every contract key is there, with a value of the right kind."""
    assert set(stats) >= STATS_KEYS, STATS_KEYS - set(stats)
    for key in COUNT_KEYS:
        assert isinstance(stats[key], int) and not isinstance(stats[key], bool) and stats[key] >= 0, (key, stats[key])
    assert isinstance(stats["uptimeSeconds"], (int, float)) and stats["uptimeSeconds"] >= 0
    assert isinstance(stats["instanceId"], str) and stats["instanceId"]


async def get_stats(server, query: str = "", **auth: Any) -> dict[str, Any]:
    """``GET /api/v1/stats`` (asserts 200 and the contract's shape)."""
    status, headers, stats, raw = await server.request("GET", "/api/v1/stats" + (f"?{query}" if query else ""), **auth)
    assert status == 200, raw
    assert headers["Content-Type"].startswith("application/json")
    assert_stats_shape(stats)
    return stats


# -- /api/v1/stats --------------------------------------------------------------------


async def test_stats_need_no_credential_and_have_the_contract_keys(server):
    stats = await get_stats(server)
    assert stats["activeUsers"] == 0
    assert stats["totalDevices"] == 0
    assert stats["connectionsDropped"] == 0


async def test_stats_count_open_streams(server):
    streams = [await server.live_stream("alice"), await server.live_stream("alice"), await server.live_stream("bob")]
    stats = await get_stats(server)
    assert stats["activeUsers"] == 2
    assert stats["totalDevices"] == 3
    ready_instance = streams[0].all_events[0].json()["instanceId"]
    assert stats["instanceId"] == ready_instance
    for client in streams:
        client.close()


async def test_stats_count_published_events_and_sent_frames(server):
    devices = [await server.live_stream("alice"), await server.live_stream("alice")]
    before = await get_stats(server)
    await server.notify("alice", "counted")
    for device in devices:
        await device.next_event()
    after = await get_stats(server)
    assert after["eventsPublished"] == before["eventsPublished"] + 1
    assert after["framesSent"] == before["framesSent"] + 2
    assert after["uptimeSeconds"] >= before["uptimeSeconds"]
    for device in devices:
        device.close()


async def test_stats_name_no_users_without_detail(server):
    client = await server.live_stream("user-secret-name")
    for auth in ({}, {"as_user": "root", "role": "admin"}):
        status, _, stats, raw = await server.request("GET", "/api/v1/stats", **auth)
        assert status == 200
        assert "users" not in stats
        assert b"user-secret-name" not in raw
    client.close()


async def test_stats_detail_users_lists_device_counts_for_an_admin(server):
    clients = [await server.live_stream("alice"), await server.live_stream("alice"), await server.live_stream("bob")]
    stats = await get_stats(server, "detail=users", as_user="root", role="admin")
    assert stats["users"] == {"alice": 2, "bob": 1}
    for client in clients:
        client.close()


@pytest.mark.parametrize("role", ["user", "publisher"])
async def test_stats_detail_users_is_403_for_non_admins(server, role):
    status, _, _, raw = await server.request("GET", "/api/v1/stats?detail=users", as_user="alice", role=role)
    assert_error_body(status, raw, 403)


async def test_stats_detail_users_without_credential_is_401(server):
    status, _, _, raw = await server.request("GET", "/api/v1/stats?detail=users")
    assert_error_body(status, raw, 401)


async def test_stats_cluster_scope_sums_the_instances(server):
    clients = [await server.live_stream("alice"), await server.live_stream("bob")]
    stats = await get_stats(server, "scope=cluster")
    instances = stats["instances"]
    assert isinstance(instances, list) and len(instances) == 1
    for instance in instances:
        assert_stats_shape(instance)
    assert instances[0]["instanceId"] == server.manager.get_stats()["instanceId"]
    for key in ("activeUsers", "totalDevices", "eventsPublished", "framesSent", "connectionsDropped"):
        assert stats[key] == sum(instance[key] for instance in instances), key
    assert stats["totalDevices"] == 2
    for client in clients:
        client.close()


@pytest.mark.parametrize("query", ["scope=bogus", "scope=", "detail=everything"])
async def test_stats_bad_query_value_is_400(server, query):
    status, _, _, raw = await server.request("GET", f"/api/v1/stats?{query}")
    assert_error_body(status, raw, 400)


# -- health ------------------------------------------------------------------------------


async def test_sse_health_reports_connection_stats(server):
    client = await server.live_stream("alice")
    status, _, body, raw = await server.request("GET", "/health/sse")
    assert status == 200, raw
    assert set(body) == {"healthy", "connections"}
    assert body["healthy"] is True
    assert_stats_shape(body["connections"])
    assert body["connections"]["totalDevices"] == 1
    assert b"alice" not in raw
    client.close()


async def test_health_is_ok_when_database_and_broker_answer(server):
    status, _, body, raw = await server.request("GET", "/health")
    assert status == 200, raw
    assert body == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


async def test_health_is_503_naming_the_database_when_it_is_down(server, monkeypatch):
    def broken() -> bool:
        raise OperationalError("unable to open database file")

    monkeypatch.setattr(queries, "ping", broken)
    status, headers, body, raw = await server.request("GET", "/health")
    assert status == 503, raw
    assert headers["Content-Type"].startswith("application/json")
    assert body["status"] != "ok"
    assert body["checks"]["database"] != "ok"
    assert body["checks"]["broker"] == "ok"


# -- /metrics ------------------------------------------------------------------------------


async def test_metrics_are_prometheus_text_with_stream_gauges(server):
    client = await server.live_stream("alice")
    await server.notify("alice", "counted")
    await client.next_event()
    status, headers, _, raw = await server.request("GET", "/metrics", headers={"Accept": "text/plain"})
    assert status == 200, raw
    assert headers["Content-Type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(raw.decode("utf-8"))}
    assert "notify_open_streams" in families
    assert families["notify_open_streams"].type == "gauge"
    assert [sample.value for sample in families["notify_open_streams"].samples] == [1]
    assert sum(sample.value for sample in families["notify_events_published"].samples if sample.name.endswith("_total")) >= 1
    client.close()


async def test_metrics_carry_no_credential_or_user_id(server):
    token = server.token("alice")
    client = await server.live_stream("alice", auth=False, query=f"token={token}")
    status, _, _, raw = await server.request("GET", "/metrics")
    assert status == 200
    text = raw.decode("utf-8")
    assert token not in text
    assert token.split(".")[2] not in text
    assert "alice" not in text
    client.close()


# -- IOLoop lag ------------------------------------------------------------------------------


async def test_stats_report_recent_loop_lag_in_milliseconds(server):
    lag = server.app.deps.loop_lag
    await wait_until(lambda: lag.samples >= 2)
    stats = await get_stats(server)
    summary = stats["loopLagMs"]
    assert set(summary) == {"p50", "p99", "max", "samples"}
    assert summary["samples"] >= 2
    assert 0 <= summary["p50"] <= summary["p99"] <= summary["max"]


async def test_a_blocked_loop_shows_as_loop_lag_in_stats_and_metrics(server):
    lag = server.app.deps.loop_lag
    await wait_until(lambda: lag.samples >= 1)
    # The stall under test: the loop thread is held for 200 ms, as a slow
    # synchronous call would hold it.
    time.sleep(0.2)
    taken = lag.samples
    await wait_until(lambda: lag.samples > taken)
    stats = await get_stats(server)
    assert stats["loopLagMs"]["max"] >= 100
    status, _, _, raw = await server.request("GET", "/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(raw.decode("utf-8"))}
    histogram = families["notify_loop_lag_seconds"]
    assert histogram.type == "histogram"
    buckets = {sample.labels["le"]: sample.value for sample in histogram.samples if sample.name.endswith("_bucket")}
    assert buckets["+Inf"] >= 2
    assert buckets["0.1"] < buckets["+Inf"], "the 200 ms stall belongs above the 0.1 s bucket"
