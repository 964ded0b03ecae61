"""The database runner: writes off the loop, group commit, order, isolation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from models import queries
from models.tables import Notification

pytestmark = pytest.mark.timeout(30)


def _blocking_job(started: threading.Event, release: threading.Event) -> str:
    """A write job that holds the writer thread until ``release`` is set."""
    started.set()
    release.wait(10)
    return "released"


async def _wait_threading_event(event: threading.Event) -> None:
    """Await a threading.Event without blocking the loop."""
    await asyncio.get_running_loop().run_in_executor(None, event.wait, 10)


async def test_streams_keep_flowing_while_the_writer_is_busy(make_server):
    server = await make_server(keepalive_interval=0.1)
    client = await server.live_stream("alice")
    started, release = threading.Event(), threading.Event()
    blocked = server.app.runner.write(_blocking_job, started, release)
    await _wait_threading_event(started)
    try:
        # The writer thread is stuck; the loop must still serve pings and
        # requests that do not write.
        assert await client.next_comment(timeout=5) == "connected"
        assert await client.next_comment(timeout=5) == "ping"
        status, _, body, _ = await server.request("GET", "/health/sse")
        assert status == 200 and body["connections"]["totalDevices"] == 1
    finally:
        release.set()
    assert await blocked == "released"
    client.close()


async def test_concurrent_creates_commit_in_fewer_transactions_than_jobs(server):
    runner = server.app.runner
    started, release = threading.Event(), threading.Event()
    blocked = runner.write(_blocking_job, started, release)
    await _wait_threading_event(started)
    batches_before = runner.batches
    # Queue 20 creates behind the blocked job: they are taken as one batch.
    creates = [asyncio.ensure_future(server.notify("alice", f"n{i}")) for i in range(20)]
    await asyncio.sleep(0.2)  # let the 20 requests reach the writer queue
    release.set()
    await blocked
    await asyncio.gather(*creates)
    assert runner.batches - batches_before < 20
    listed = await server.request("GET", "/api/v1/users/alice/notifications?limit=100", as_user="alice")
    assert len(listed[2]["items"]) == 20


async def test_a_failing_job_fails_alone_in_its_batch(server):
    runner = server.app.runner
    started, release = threading.Event(), threading.Event()
    blocked = runner.write(_blocking_job, started, release)
    await _wait_threading_event(started)

    def broken() -> None:
        queries.append_event("bob", None, "{}", 1)
        raise RuntimeError("job failed after writing")

    good = runner.write(queries.append_event, "alice", None, "{}", 1)
    bad = runner.write(broken)
    release.set()
    await blocked
    cursor = await good
    with pytest.raises(RuntimeError):
        await bad
    rows_of_bob = await runner.read(queries.events_after, "bob", 0, 10)
    rows_of_alice = await runner.read(queries.events_after, "alice", 0, 10)
    assert rows_of_bob == []  # the failed job's savepoint was rolled back
    assert [row[0] for row in rows_of_alice] == [cursor]


async def test_after_commit_callbacks_run_in_commit_order(server):
    runner = server.app.runner
    seen: list[int] = []
    futures = [
        runner.write(queries.append_event, "alice", None, "{}", 1, on_commit=seen.append) for _ in range(50)
    ]
    cursors = await asyncio.gather(*futures)
    assert seen == cursors == sorted(cursors)


async def test_a_notification_and_its_event_are_stored_together(server):
    created = await server.notify("alice", "together")
    rows = await server.app.runner.read(queries.events_after, "alice", 0, 10)
    assert len(rows) == 1 and created["notificationId"] in rows[0][2]
    count = await server.app.runner.read(lambda: Notification.select().count())
    assert count == 1
