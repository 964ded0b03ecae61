"""The database runner: writes off the loop, group commit, order, isolation."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading

import pytest

from models import queries
from models.tables import Notification
from tests.conftest import TEST_DB
from tests.support.checks import wait_until

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
    await wait_until(lambda: runner.queued() >= 20)
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


def _double(value: int) -> int:
    return value * 2


async def test_jobs_queued_together_with_one_bulk_kind_run_in_one_bulk_call(server):
    runner = server.app.runner
    calls: list[list[tuple]] = []

    def double_all(args_list: list[tuple]) -> list[int]:
        calls.append(args_list)
        return [value * 2 for (value,) in args_list]

    started, release = threading.Event(), threading.Event()
    blocked = runner.write(_blocking_job, started, release)
    await _wait_threading_event(started)
    futures = [runner.write(_double, i, bulk=double_all) for i in range(5)]
    release.set()
    await blocked
    assert await asyncio.gather(*futures) == [0, 2, 4, 6, 8]
    assert calls == [[(0,), (1,), (2,), (3,), (4,)]]


async def test_a_failing_bulk_call_falls_back_to_one_job_at_a_time(server):
    runner = server.app.runner

    def refuse_all(args_list: list[tuple]) -> list[int]:
        raise RuntimeError("bulk path failed")

    started, release = threading.Event(), threading.Event()
    blocked = runner.write(_blocking_job, started, release)
    await _wait_threading_event(started)
    futures = [runner.write(_double, i, bulk=refuse_all) for i in range(3)]
    release.set()
    await blocked
    assert await asyncio.gather(*futures) == [0, 2, 4]


async def test_creates_committed_in_one_batch_keep_each_users_cursor_and_list_order(server):
    runner = server.app.runner
    started, release = threading.Event(), threading.Event()
    blocked = runner.write(_blocking_job, started, release)
    await _wait_threading_event(started)
    users = ["alice", "bob", "carol"]
    creates = [asyncio.ensure_future(server.notify(users[i % 3], f"n{i}")) for i in range(30)]
    await wait_until(lambda: runner.queued() >= 30)
    release.set()
    await blocked
    await asyncio.gather(*creates)
    for user in users:
        listed = (await server.request("GET", f"/api/v1/users/{user}/notifications?limit=100", as_user=user))[2]
        oldest_first = [item["notificationId"] for item in reversed(listed["items"])]
        events = await runner.read(queries.events_after, user, 0, 100)
        assert [cursor for cursor, _, _ in events] == list(range(1, 11))
        assert [json.loads(data)["notificationId"] for _, _, data in events] == oldest_first


def _which_thread(tag: str) -> tuple[str, str]:
    """A read that says which thread ran it."""
    return tag, threading.current_thread().name


def _failing_read() -> None:
    raise ValueError("this read fails alone")


async def test_reads_asked_together_share_the_reader_threads_and_each_gets_its_own_answer(server):
    runner = server.app.runner
    answers = await asyncio.gather(*(runner.read(_which_thread, f"r{i}") for i in range(40)))
    assert [tag for tag, _ in answers] == [f"r{i}" for i in range(40)]
    threads = {name for _, name in answers}
    # One share per reader thread, not one hand-over per read.
    assert all(name.startswith("db-reader") for name in threads)
    assert len(threads) <= 4


async def test_a_failing_read_fails_alone_among_reads_asked_together(server):
    runner = server.app.runner
    results = await asyncio.gather(runner.read(_which_thread, "before"), runner.read(_failing_read),
                                   runner.read(_which_thread, "after"), return_exceptions=True)
    assert results[0][0] == "before" and results[2][0] == "after"
    assert isinstance(results[1], ValueError)


def count_begins(runner, monkeypatch) -> list[str]:
    """The names of the threads that begin a transaction from now on."""
    begins: list[str] = []
    real_begin = runner.db.begin

    def counting_begin(*args, **kwargs):
        begins.append(threading.current_thread().name)
        return real_begin(*args, **kwargs)

    monkeypatch.setattr(runner.db, "begin", counting_begin)
    return begins


async def test_a_batch_of_creates_is_one_statement_on_postgresql_and_one_transaction_on_sqlite(server, monkeypatch):
    # On PostgreSQL a run of creates is a single statement, atomic by
    # itself: no BEGIN/COMMIT round trips around it.  SQLite's three
    # statements per create need their transaction.
    runner = server.app.runner
    begins = count_begins(runner, monkeypatch)
    created = await asyncio.gather(*(server.notify("alice", f"n{i}") for i in range(10)))
    assert len({note["notificationId"] for note in created}) == 10
    if TEST_DB == "postgresql":
        assert begins == []
    else:
        assert 1 <= len(begins) <= 10
    status, _, body, _ = await server.request("GET", "/api/v1/users/alice/notifications?limit=100", as_user="alice")
    assert status == 200 and len(body["items"]) == 10


async def test_a_heavy_job_commits_without_waiting_for_the_jobs_queued_after_it(server):
    # A batch holds at most MAX_BATCH rows of work: an event for 200 users
    # commits (and is delivered) before the next one is written.
    runner = server.app.runner
    started, release = threading.Event(), threading.Event()
    blocked = runner.write(_blocking_job, started, release)
    await _wait_threading_event(started)

    def batches_done_before(label: str) -> tuple[str, int]:
        # Runs on the writer: the jobs of one batch see the same count.
        return label, runner.batches

    futures = [
        runner.write(batches_done_before, "heavy-1", weight=200),
        runner.write(batches_done_before, "heavy-2", weight=200),
        runner.write(batches_done_before, "light"),
    ]
    release.set()
    await blocked
    (_, first), (_, second), (_, third) = await asyncio.gather(*futures)
    # heavy-1 alone, then heavy-2 with the light job.
    assert second == first + 1
    assert third == second

async def test_a_bare_job_runs_alone_and_outside_a_transaction(server):
    runner = server.app.runner
    started, release = threading.Event(), threading.Event()
    blocked = runner.write(_blocking_job, started, release)
    await _wait_threading_event(started)
    batches_before = runner.batches
    before = runner.write(_double, 1)
    bare = runner.write(lambda: runner.db.in_transaction(), bare=True)
    after = runner.write(_double, 2)
    release.set()
    await blocked
    assert await before == 2 and await after == 4
    assert await bare is False
    assert runner.batches - batches_before == 4


def _thread_and_niceness() -> tuple[str, int]:
    return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
async def test_upkeep_runs_on_its_own_thread_at_the_lowest_priority(server):
    name, niceness = await server.app.runner.upkeep(_thread_and_niceness)
    assert name.startswith("db-upkeep")
    assert niceness == 19


async def test_a_checkpoint_lets_the_write_ahead_log_start_over_even_when_the_upkeep_pass_cannot(
    make_server, tmp_path, monkeypatch
):
    # Under a steady stream of commits the upkeep thread's checkpoint never
    # completes (new frames keep arriving), and SQLite starts the log over
    # only after a complete one: without the writer's own pass the log
    # would grow for as long as the load lasts.  Simulated here by an
    # upkeep pass that does nothing.
    server = await make_server(db_url=f"sqlite:///{tmp_path}/wal.db")
    runner = server.app.runner

    async def no_upkeep(fn, *args):
        return None

    monkeypatch.setattr(runner, "upkeep", no_upkeep)
    wal = tmp_path / "wal.db-wal"
    for i in range(30):
        await server.notify("alice", f"n{i}")
    await server.app.service.checkpoint()
    size_before = wal.stat().st_size
    # The file keeps its size; a log that started over is written from
    # its beginning again instead of growing.  A third as many creates as
    # before: the server's own once-a-second checkpoint may have started
    # the log over once during the first 30 as well, and the file's size
    # is that of its longest run.
    for i in range(10):
        await server.notify("alice", f"m{i}")
    assert wal.stat().st_size <= size_before
    listed = await server.request("GET", "/api/v1/users/alice/notifications?limit=100", as_user="alice")
    assert len(listed[2]["items"]) == 40


async def test_an_event_for_many_users_is_one_statement_on_postgresql_and_one_transaction_on_sqlite(
    server, monkeypatch
):
    runner = server.app.runner
    begins = count_begins(runner, monkeypatch)
    users = [f"user-{i}" for i in range(300)]
    status, _, body, raw = await server.request(
        "POST", "/api/v1/events", {"event": "quickcheck.completed", "userIds": users}, as_user="svc", role="publisher"
    )
    assert status == 202, raw
    assert body == {"published": 300}
    assert begins == ([] if TEST_DB == "postgresql" else ["db-writer"])
    # Every user's log has the event, at that user's first cursor.
    for user_id in (users[0], users[-1]):
        rows = await runner.read(queries.events_after, user_id, 0, 10)
        assert [(cursor, name) for cursor, name, _ in rows] == [(1, "quickcheck.completed")]


async def test_jobs_asked_for_after_close_fail_at_once_instead_of_waiting_forever(tmp_path):
    # A timer's checkpoint can still be on its way when the server closes
    # the runner: its next step must fail, not hang on a stopped writer.
    from models.runner import DatabaseRunner, StorageUnavailable
    from models.tables import open_database

    runner = DatabaseRunner(open_database(f"sqlite:///{tmp_path}/closed.db"), asyncio.get_running_loop(), readers=1)
    assert await runner.write(_double, 2) == 4
    await asyncio.get_running_loop().run_in_executor(None, runner.close)
    for pending in (runner.write(_double, 3), runner.upkeep(_double, 4)):
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(pending, 5)
