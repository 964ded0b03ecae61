"""Catching a live stream up from the store when live delivery missed events.

With several processes, events reach a process out of order (another
process's commit arrives late) or not at all (pub/sub drops messages while a
broker is disconnected).  Cursors count each user's events 1, 2, 3..., so a
stream that sees a cursor skip ahead reads the missing ones from the store.
These tests store events without pushing them, then deliver or resync the
way a broker would.
"""

from __future__ import annotations

import asyncio

import pytest

from core.domain.validation import compact_json
from models import queries
from tests.support.checks import cursor_of
from tests.support.hooks import around

pytestmark = pytest.mark.timeout(30)


async def store_silently(server, user_id: str, count: int) -> list[int]:
    """Store ``count`` events for ``user_id`` without pushing them (a lost delivery)."""
    cursors = []
    for i in range(count):
        cursors.append(await server.app.runner.write(queries.append_event, user_id, "job", compact_json({"n": i}), 1))
    return cursors


async def test_a_cursor_that_skips_ahead_fetches_the_missing_events_first(server):
    client = await server.live_stream("alice")
    cursors = await store_silently(server, "alice", 3)
    # Only the third reaches this process live; the first two were "lost".
    server.manager.publish("alice", compact_json({"n": 2}), event="job", cursor=cursors[2])
    events = await client.events(3)
    assert [cursor_of(event) for event in events] == cursors
    assert [event.json()["n"] for event in events] == [0, 1, 2]
    client.close()


async def test_a_late_duplicate_after_catch_up_is_not_sent_again(server):
    client = await server.live_stream("alice")
    cursors = await store_silently(server, "alice", 2)
    server.manager.publish("alice", compact_json({"n": 1}), event="job", cursor=cursors[1])
    assert [cursor_of(event) for event in await client.events(2)] == cursors
    # The first event's own delivery arrives late, from "another process".
    server.manager.publish("alice", compact_json({"n": 0}), event="job", cursor=cursors[0])
    marker = await server.notify("alice", "marker")
    assert (await client.next_event()).json() == marker


async def test_resync_after_a_broker_outage_catches_every_stream_up(server):
    alice = await server.live_stream("alice")
    bob = await server.live_stream("bob")
    lost_alice = await store_silently(server, "alice", 2)
    lost_bob = await store_silently(server, "bob", 1)
    await server.app.deps.replay.catch_up_all()
    assert [cursor_of(event) for event in await alice.events(2)] == lost_alice
    assert [cursor_of(event) for event in await bob.events(1)] == lost_bob
    # Live delivery continues after the catch-up, without repeats.
    live = await server.notify("alice", "after")
    assert (await alice.next_event()).json() == live


async def test_the_originator_skipping_its_own_event_is_not_taken_for_a_gap(server):
    sender = await server.live_stream("alice")
    ready_id = sender.all_events[0].json()["connectionId"]
    status, _, _, raw = await server.request(
        "POST", "/api/v1/users/alice/notifications", {"type": "info", "message": "mine"},
        headers={"X-Connection-Id": ready_id}, as_user="alice",
    )
    assert status == 201, raw
    other = await server.notify("alice", "theirs")
    event = await sender.next_event()
    # The next event is the other one: "mine" was neither sent nor fetched.
    assert event.json() == other


async def test_a_stream_still_replaying_during_a_resync_catches_up_once_live(server, monkeypatch):
    old = await store_silently(server, "alice", 1)
    page_read, release = asyncio.Event(), asyncio.Event()

    async def hold(device, after) -> None:
        # The stream is subscribed and its first page is read, but it is
        # not live yet: it stays so until the test has lost an event and
        # resynced.
        page_read.set()
        await release.wait()

    around(monkeypatch, server.app.deps.replay, "plan", after=hold)
    connecting = asyncio.ensure_future(server.live_stream("alice", headers={"Last-Event-ID": "0"}))
    await page_read.wait()
    lost = await store_silently(server, "alice", 1)
    await server.app.deps.replay.catch_up_all()
    release.set()
    client = await connecting
    events = await client.events(2)
    assert [cursor_of(event) for event in events] == old + lost
    client.close()
