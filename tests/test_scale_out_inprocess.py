"""Two instances behaving as one service: one Redis, one database.

Both apps run in this test process, each on its own socket, built by
``make_server(redis_url=..., db_url=<the same database>)`` exactly as
``python server.py --redis-url ... --db-url ...`` builds them.  Redis is a
real ``redis-server`` that the outage tests stop and start again on the same
port.
"""

from __future__ import annotations

import logging

import pytest

from tests.support.checks import cursor_of, wait_until

pytestmark = pytest.mark.timeout(60)

#: Seconds allowed for the brokers to notice Redis again and catch streams up
#: (their reconnect backoff grows to 5 s; these outages last well under one).
RECOVERY = 15


@pytest.fixture
def pair(redis_server, make_server, new_db_url):
    """Instances A and B sharing the test's redis-server and one database."""
    db_url = new_db_url("shared")
    a = make_server(redis_url=redis_server.url, db_url=db_url)
    b = make_server(redis_url=redis_server.url, db_url=db_url)
    return a, b


def broker_of(server):
    """The server's broker (white-box: to wait for what it has noticed)."""
    return server.app.deps.broker


async def stop_redis(redis_server, *servers) -> None:
    """Stop Redis and wait until every server's broker has noticed."""
    redis_server.stop()
    await wait_until(lambda: not any(broker_of(server).healthy() for server in servers))


async def start_redis(redis_server, *servers) -> None:
    """Start Redis again (same port) and wait until every broker is back."""
    redis_server.start()
    await wait_until(lambda: all(broker_of(server).healthy() for server in servers), timeout=RECOVERY)


def assert_no_traceback(caplog) -> None:
    """Nothing logged a traceback or an error (the access log's 503s aside)."""
    bad = [
        record for record in caplog.records
        if record.exc_info or (record.levelno >= logging.ERROR and record.name != "notify.access")
    ]
    assert not bad, [record.getMessage() for record in bad]


async def test_a_notification_created_on_one_instance_reaches_a_device_on_the_other(pair):
    a, b = pair
    device = await b.live_stream("alice")
    created = [await a.notify("alice", f"n{i}") for i in range(3)]
    events = await device.events(3)
    assert [event.json() for event in events] == created
    cursors = [cursor_of(event) for event in events]
    assert cursors == sorted(cursors)
    # Exactly once: the next event is the next notification, not a repeat.
    marker = await a.notify("alice", "marker")
    assert (await device.next_event()).json() == marker


async def test_devices_of_one_user_on_both_instances_see_the_same_events_with_the_same_cursors(pair):
    a, b = pair
    on_a = await a.live_stream("alice")
    on_b = await b.live_stream("alice")
    created = []
    for i in range(6):
        created.append(await (a if i % 2 else b).notify("alice", f"n{i}"))
    from_a = await on_a.events(6)
    from_b = await on_b.events(6)
    assert [event.json() for event in from_a] == created
    assert [(event.id, event.data) for event in from_a] == [(event.id, event.data) for event in from_b]


async def test_cluster_stats_list_both_instances_and_sum_their_devices(pair):
    a, b = pair
    # Held: an unreferenced client (and its reader task, which asyncio keeps
    # only weakly) may be garbage-collected mid-test, closing its stream.
    streams = [await a.live_stream("alice"), await b.live_stream("bob"), await b.live_stream("carol")]
    # B's count reaches A through B's heartbeat key; write it now, not in 2 s.
    await broker_of(b).heartbeat()
    status, _, stats, raw = await a.request("GET", "/api/v1/stats?scope=cluster")
    assert status == 200, raw
    ids = {a.manager.instance_id, b.manager.instance_id}
    assert {instance["instanceId"] for instance in stats["instances"]} == ids
    assert stats["instanceId"] == a.manager.instance_id
    assert stats["totalDevices"] == 3
    assert stats["activeUsers"] == 3
    for stream in streams:
        await stream.aclose()


async def test_cluster_stats_drop_an_instance_that_stopped(pair):
    a, b = pair
    # What NotifyApp.stop() does for the cluster view (the fixture stops it).
    await broker_of(b).close()
    status, _, stats, raw = await a.request("GET", "/api/v1/stats?scope=cluster")
    assert status == 200, raw
    assert [instance["instanceId"] for instance in stats["instances"]] == [a.manager.instance_id]


async def test_health_names_the_broker_while_redis_is_down(pair, redis_server):
    a, _ = pair
    await stop_redis(redis_server, a)
    status, _, body, raw = await a.request("GET", "/health")
    assert status == 503, raw
    assert body["checks"] == {"database": "ok", "broker": "down"}


async def test_an_instance_serves_its_own_devices_while_redis_is_down(pair, redis_server, caplog):
    a, _ = pair
    device = await a.live_stream("alice")
    await stop_redis(redis_server, a)
    created = await a.notify("alice", "during the outage")  # asserts 201
    assert (await device.next_event()).json() == created
    assert_no_traceback(caplog)


async def test_health_is_ok_again_after_redis_comes_back(pair, redis_server):
    a, b = pair
    await stop_redis(redis_server, a, b)
    await start_redis(redis_server, a, b)
    status, _, body, raw = await a.request("GET", "/health")
    assert status == 200, raw
    assert body["checks"] == {"database": "ok", "broker": "ok"}


async def test_devices_on_other_instances_catch_up_on_what_was_created_during_an_outage(pair, redis_server, caplog):
    caplog.set_level(logging.WARNING)
    a, b = pair
    on_a = await a.live_stream("alice")
    on_b = await b.live_stream("alice")
    before = await a.notify("alice", "before")
    assert (await on_a.next_event()).json() == before
    assert (await on_b.next_event()).json() == before

    await stop_redis(redis_server, a, b)
    during = [await a.notify("alice", f"during {i}") for i in range(3)]
    # A's own device does not wait for Redis.
    assert [event.json() for event in await on_a.events(3)] == during

    await start_redis(redis_server, a, b)
    # B's device missed them live; B's resync reads them from the database.
    assert [event.json() for event in await on_b.events(3, timeout=RECOVERY)] == during

    after = await b.notify("alice", "after")
    for device in (on_a, on_b):
        # Every device ends with every notification, in order, exactly once.
        assert (await device.next_event()).json() == after
        cursors = [cursor_of(event) for event in device.all_events if event.id is not None]
        assert cursors == sorted(set(cursors))
        assert len(cursors) == 5
    assert_no_traceback(caplog)
