"""Replay on reconnect, as CONTRACT.md "The stream" describes it.

With ``Last-Event-ID`` (or ``?lastEventId=``) a stream first sends every
event of its user with a greater cursor, in order, then live events, with
none missing and none twice, even while events are being published during
the handover; a cursor history no longer reaches gets ``event: reset``
first; a malformed one is treated as absent.

Expected cursors come from a "witness" stream that stays open the whole
time: live delivery is checked on its own in ``test_stream.py``, so what
the witness saw is the user's event log as the wire shows it.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from tests.support.checks import cursor_of
from tests.support.hooks import around

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = pytest.mark.timeout(30)

#: Seconds in a day, to move the service clock past the retention period.
DAY = 86_400


def summary(events) -> list[tuple[str, int, str]]:
    """``(type, cursor, data)`` of each event: what must match between streams."""
    return [(event.type, cursor_of(event), event.data) for event in events]


async def resume(server, user_id: str, cursor, via: str = "header"):
    """Reconnect ``user_id`` from ``cursor`` and wait for ``ready``.

    :param via: ``"header"`` sends ``Last-Event-ID``, ``"query"`` sends
        ``?lastEventId=``.
    """
    if via == "header":
        return await server.live_stream(user_id, headers={"Last-Event-ID": str(cursor)})
    return await server.live_stream(user_id, query=f"lastEventId={cursor}")


async def notify_seen(server, client, user_id: str, count: int, prefix: str = "n"):
    """Create ``count`` notifications one by one; :returns: the events ``client`` got for them."""
    for i in range(count):
        await server.notify(user_id, f"{prefix}{i}")
    return await client.events(count)


async def publish_event(server, name: str, user_ids: list[str], data: dict) -> None:
    """``POST /api/v1/events`` as a publisher (asserts 202)."""
    status, _, body, raw = await server.request(
        "POST", "/api/v1/events", {"event": name, "userIds": user_ids, "data": data},
        as_user="svc", role="publisher",
    )
    assert status == 202, raw
    assert body == {"published": len(user_ids)}


async def read_until_cursor(client, last: int, timeout: float = 10):
    """Every event ``client`` gets up to and including cursor ``last``."""
    received = []
    async with asyncio.timeout(timeout):
        while not received or cursor_of(received[-1]) < last:
            received.append(await client.next_event(timeout=None))
    return received


def assert_strictly_increasing(cursors: list[int]) -> None:
    """No duplicate and no step back."""
    assert all(a < b for a, b in itertools.pairwise(cursors)), cursors


# -- replay ------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["header", "query"])
async def test_replay_sends_missed_events_in_order_then_live(server, via):
    witness = await server.live_stream("alice")
    first = await server.live_stream("alice")
    seen = await notify_seen(server, first, "alice", 5)
    first.close()
    missed = [await server.notify("alice", f"missed{i}") for i in range(3)]
    logged = await witness.events(8)
    resumed = await resume(server, "alice", cursor_of(seen[1]), via=via)
    replayed = await resumed.events(6)
    assert summary(replayed) == summary(logged[2:])
    assert [event.json() for event in replayed[3:]] == missed
    live = await server.notify("alice", "live")
    event = await resumed.next_event()
    assert event.json() == live
    assert cursor_of(event) > cursor_of(replayed[-1])
    witness.close()
    resumed.close()


@pytest.mark.parametrize("value", ["abc", "-1", "", "12abc", "1.5"])
async def test_malformed_last_event_id_is_treated_as_absent(server, value):
    writer = await server.live_stream("alice")
    await notify_seen(server, writer, "alice", 3)
    writer.close()
    resumed = await server.live_stream("alice", headers={"Last-Event-ID": value})
    live = await server.notify("alice", "live")
    # The first event after ready is the live one: nothing was replayed.
    assert (await resumed.next_event()).json() == live
    assert resumed.all_events[0].type == "ready" and len(resumed.all_events) == 2
    resumed.close()


async def test_malformed_last_event_id_query_is_treated_as_absent(server):
    writer = await server.live_stream("alice")
    await notify_seen(server, writer, "alice", 2)
    writer.close()
    resumed = await server.live_stream("alice", query="lastEventId=abc")
    live = await server.notify("alice", "live")
    assert (await resumed.next_event()).json() == live
    resumed.close()


async def test_replay_leaves_out_other_users_events(server):
    alice = await server.live_stream("alice")
    start = cursor_of((await notify_seen(server, alice, "alice", 1))[0])
    alice.close()
    mine = []
    for i in range(4):
        mine.append(await server.notify("alice", f"alice{i}"))
        await server.notify("bob", f"bob{i}")
    await publish_event(server, "chat.message", ["bob"], {"to": "bob"})
    resumed = await resume(server, "alice", start)
    replayed = await resumed.events(4)
    assert [event.json() for event in replayed] == mine
    sentinel = await server.notify("alice", "sentinel")
    assert (await resumed.next_event()).json() == sentinel
    resumed.close()


async def test_named_events_replay_with_their_names(server):
    witness = await server.live_stream("alice")
    first = await server.live_stream("alice")
    created = await notify_seen(server, first, "alice", 2)
    kept, gone = (event.json()["notificationId"] for event in created)
    start = cursor_of(created[-1])
    first.close()
    base = "/api/v1/users/alice/notifications"
    status, _, _, raw = await server.request("PATCH", f"{base}/{kept}", {"read": True}, as_user="alice")
    assert status == 200, raw
    status, _, _, raw = await server.request("DELETE", f"{base}/{gone}", as_user="alice")
    assert status == 204, raw
    await publish_event(server, "order.shipped", ["alice"], {"orderId": 42})
    logged = (await witness.events(5))[2:]
    resumed = await resume(server, "alice", start)
    replayed = await resumed.events(3)
    assert [event.type for event in replayed] == ["notification-read", "notification-deleted", "order.shipped"]
    assert summary(replayed) == summary(logged)
    read, deleted, shipped = (event.json() for event in replayed)
    assert read["notificationIds"] == [kept] and read["unreadCount"] == 1
    assert deleted["notificationIds"] == [gone] and deleted["unreadCount"] == 0
    assert shipped == {"orderId": 42}
    witness.close()
    resumed.close()


@pytest.mark.slow
async def test_replay_longer_than_one_page_arrives_complete_and_in_order(make_server):
    # core/domain/service.py reads the log in pages of 500 events.  A volume test,
    # not one of the publish budget: publishing is not limited here.
    server = await make_server(publish_rate=0)
    total = 1200
    first = await server.live_stream("alice")
    start = cursor_of((await notify_seen(server, first, "alice", 1))[0])
    first.close()
    for batch in range(0, total, 100):
        await asyncio.gather(
            *(publish_event(server, "tick", ["alice"], {"i": i}) for i in range(batch, batch + 100))
        )
    resumed = await resume(server, "alice", start)
    replayed = await resumed.events(total, timeout=20)
    assert all(event.type == "tick" for event in replayed)
    assert sorted(event.json()["i"] for event in replayed) == list(range(total))
    cursors = [cursor_of(event) for event in replayed]
    assert cursors[0] > start
    assert_strictly_increasing(cursors)
    live = await server.notify("alice", "live")
    assert (await resumed.next_event()).json() == live
    resumed.close()


async def test_replay_of_more_history_than_the_slow_reader_bound_arrives_whole(make_server):
    # 100 events of about 4 KiB: 400 KiB of history against a 16 KiB bound
    # (and a kernel send buffer of the same size): a client that reads is
    # not a slow reader, however much it has to catch up on.
    server = await make_server(max_buffer_kb=16)
    blob = "\u00e9" * 2000  # two UTF-8 bytes each
    for i in range(100):
        await publish_event(server, "big", ["alice"], {"i": i, "blob": blob})
    resumed = await resume(server, "alice", 0)
    replayed = await resumed.events(100, timeout=20)
    assert [event.json()["i"] for event in replayed] == list(range(100))
    assert_strictly_increasing([cursor_of(event) for event in replayed])
    assert server.manager.connections_dropped == 0
    live = await server.notify("alice", "live")
    assert (await resumed.next_event()).json() == live
    resumed.close()


# -- history that no longer reaches -----------------------------------------------


async def test_cursor_older_than_retention_gets_reset_first(server):
    first = await server.live_stream("alice")
    seen = await notify_seen(server, first, "alice", 3)
    first.close()
    service = server.app.service
    # Everything stored so far is now older than the retention period.
    service._clock = lambda: time.time() + 8 * DAY
    try:
        assert await service.prune() == 3
    finally:
        service._clock = time.time
    resumed = await resume(server, "alice", cursor_of(seen[0]))
    reset = await resumed.next_event()
    assert reset.type == "reset"
    reset.json()  # it has a JSON data line
    assert cursor_of(reset) >= cursor_of(seen[-1])
    live = await server.notify("alice", "live")
    event = await resumed.next_event()
    assert event.json() == live
    assert cursor_of(event) > cursor_of(reset)
    resumed.close()


async def test_cursor_beyond_the_log_gets_reset_first(server):
    first = await server.live_stream("alice")
    seen = await notify_seen(server, first, "alice", 2)
    first.close()
    # A cursor from another database: greater than any this one handed out.
    resumed = await resume(server, "alice", cursor_of(seen[-1]) + 1000)
    reset = await resumed.next_event()
    assert reset.type == "reset"
    reset.json()
    live = await server.notify("alice", "live")
    event = await resumed.next_event()
    assert event.json() == live
    assert cursor_of(event) > cursor_of(reset)
    resumed.close()


async def test_cursor_at_the_head_replays_nothing_and_no_reset(server):
    first = await server.live_stream("alice")
    seen = await notify_seen(server, first, "alice", 2)
    first.close()
    resumed = await resume(server, "alice", cursor_of(seen[-1]))
    live = await server.notify("alice", "live")
    assert (await resumed.next_event()).json() == live
    resumed.close()


# -- the handover race -------------------------------------------------------------


async def publish_concurrently(server, user_id: str, total: int, batch: int, marks: dict[int, asyncio.Event]) -> None:
    """Create ``total`` notifications in concurrent batches of ``batch``.

    ``marks[n]`` is set once ``n`` notifications have been created; the
    publishing goes on meanwhile, so whoever waits on it reconnects in the
    middle of the flow.
    """
    for start in range(0, total + 1, batch):
        for count, mark in marks.items():
            if start >= count:
                mark.set()
        if start < total:
            await asyncio.gather(*(server.notify(user_id, f"live{i}") for i in range(start, min(start + batch, total))))


async def reconnect_at(server, user_id: str, cursor: int, mark: asyncio.Event):
    """Once ``mark`` is set, reconnect ``user_id`` from ``cursor``."""
    await mark.wait()
    return await resume(server, user_id, cursor)


def publish_around_history_reads(monkeypatch, server, user_id: str) -> None:
    """From now on, create a notification right before and right after each stream's history read.

    The first is committed once the device is subscribed but before its
    history is read: it is both in the history and queued live (sent twice
    unless the handover skips it).  The second is committed after the read,
    before the device goes live: it is only queued live (lost unless the
    queue is flushed after the history).  Every reconnection meets both
    cases, every run, while the concurrent publishing goes on.
    """

    async def before_read(device, after) -> None:
        await server.notify(user_id, f"before the read of {device.id}")

    async def after_read(device, after) -> None:
        await server.notify(user_id, f"after the read of {device.id}")

    around(monkeypatch, server.app.deps.replay, "plan", before=before_read, after=after_read)


@pytest.mark.parametrize("around_reads", [False, True], ids=["as-is", "around-each-read"])
async def test_replay_during_concurrent_publishing_misses_nothing_and_repeats_nothing(make_server, monkeypatch, around_reads):
    # Room for the witness and every reconnection at once; publishing as
    # fast as the server stores (a test of the handover, not of the budget).
    server = await make_server(max_devices_per_user=20, publish_rate=0)
    witness = await server.live_stream("alice")
    first = await server.live_stream("alice")
    seen = await notify_seen(server, first, "alice", 50, prefix="before")
    k = cursor_of(seen[-1])
    first.close()
    await witness.events(50)

    # Several devices resume from k at different points of the flow.
    marks = {count: asyncio.Event() for count in (0, 30, 70, 110, 150, 190)}
    if around_reads:
        publish_around_history_reads(monkeypatch, server, "alice")
    reconnections = [asyncio.ensure_future(reconnect_at(server, "alice", k, mark)) for mark in marks.values()]
    await publish_concurrently(server, "alice", 200, 10, marks)
    clients = await asyncio.gather(*reconnections)

    # A reconnection is ready once its hooks' notifications are created.
    logged = await witness.events(200 + (2 * len(marks) if around_reads else 0))
    expected = [cursor_of(event) for event in logged]
    assert all(cursor > k for cursor in expected)
    for client in clients:
        received = await read_until_cursor(client, expected[-1])
        cursors = [cursor_of(event) for event in received]
        assert_strictly_increasing(cursors)
        assert cursors == expected
        assert summary(received) == summary(logged)
        client.close()
    witness.close()
