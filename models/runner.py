"""Running peewee's synchronous queries off the IOLoop.

Writes go through one writer thread that commits the jobs waiting at the
same time in one transaction (if one fails, the batch is rolled back and
re-run one job per transaction, so a failing job fails alone).  That keeps SQLite to a single writer, turns a burst of
concurrent creates into one fsync, and gives every commit a place in one
order: the after-commit callbacks run on the loop in that order, which is
what keeps cursors increasing on every stream.  Reads go to a small pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

from peewee import Database, InterfaceError, OperationalError, PostgresqlDatabase

from models.tables import database

log = logging.getLogger("notify.db")

#: Work committed together at most, in rows (a job's ``weight``, one by
#: default): bounds a transaction's size, and how long the after-commit
#: deliveries of its first job wait for the rest.
MAX_BATCH = 256

_STOP = object()
#: Why a job asked for after close() fails.
_CLOSED = "the database runner is closed"


class StorageUnavailable(Exception):
    """The database could not run a job (down, unreachable, locked too long).

    Raised in place of the driver's own error, so callers need not know
    which database is behind the runner.
    """


def _translate(exc: BaseException) -> BaseException:
    """A driver failure becomes :class:`StorageUnavailable`; others pass."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        unavailable = StorageUnavailable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        unavailable.__cause__ = exc
        return unavailable
    return exc


class _Job:
    __slots__ = ("fn", "args", "future", "on_commit", "bulk", "one_statement", "weight", "bare", "result", "error")

    def __init__(self, fn, args, future, on_commit, bulk=None, one_statement=False, weight=1, bare=False) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.on_commit = on_commit
        self.bulk = bulk
        self.one_statement = one_statement
        # A bare job runs alone and outside any transaction.
        self.bare = bare
        self.weight = MAX_BATCH if bare else weight
        self.result: Any = None
        self.error: BaseException | None = None


class DatabaseRunner:
    """A writer thread with group commit and a pool of reader threads.

    :param db: the opened database.
    :param loop: the loop whose coroutines await results.
    :param readers: reader threads; 0 runs reads on the writer thread
        (required for ``:memory:`` SQLite, where every connection would see
        its own empty database).
    """

    def __init__(self, db: Database, loop: asyncio.AbstractEventLoop, readers: int = 4) -> None:
        self.db = db
        self.loop = loop
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="db-writer", daemon=True)
        self._readers = (
            concurrent.futures.ThreadPoolExecutor(
                max_workers=readers, thread_name_prefix="db-reader", initializer=database.bind_thread, initargs=(db,)
            )
            if readers > 0
            else None
        )
        self._reader_count = readers
        # Upkeep nobody waits for (SQLite's checkpoint) gets a thread of its
        # own at the lowest priority: it runs when the loop is idle instead
        # of taking turns with it on a busy core.
        self._upkeep = (
            concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="db-upkeep", initializer=self._start_upkeep_thread
            )
            if readers > 0
            else None
        )
        # peewee keeps the psycopg2 connection in autocommit mode and sends
        # BEGIN for a transaction: one statement alone commits itself.
        self._autocommit_one_statement = isinstance(db, PostgresqlDatabase)
        self._reads: list[tuple[Callable[..., Any], tuple, asyncio.Future[Any]]] = []
        self.batches = 0
        self.jobs = 0
        self._closed = False
        self._writer.start()

    def write(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_commit: Callable[[Any], None] | None = None,
        bulk: Callable[[list[tuple]], list[Any]] | None = None,
        one_statement: bool = False,
        weight: int = 1,
        bare: bool = False,
    ) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in the writer's transaction.

        :param on_commit: called on the loop with ``fn``'s result once the
            transaction has committed, before the returned future resolves,
            in commit order across all jobs (this is where events are
            emitted).
        :param bulk: does the work of several such jobs at once:
            ``bulk([args, ...])`` returns their results in order, as ``fn``
            would have.  Jobs with the same ``bulk`` next to each other in a
            batch go through it in one call (one statement instead of one
            per job, which is what a PostgreSQL round trip makes worth it).
        :param one_statement: on PostgreSQL, ``fn`` (and ``bulk``) is a
            single statement.  A batch made only of this job, or only of one
            run of such jobs through ``bulk``, is then that one statement,
            atomic by itself: it runs without ``BEGIN`` and ``COMMIT``, two
            round trips fewer (the driver connection is in autocommit mode).
        :param weight: the rows ``fn`` writes, about.  A batch holds at most
            :data:`MAX_BATCH` of them, so an event for 1,000 users commits
            alone: its devices get it while the writer stores the next one,
            instead of after every event queued with it.
        :param bare: run ``fn`` alone, between two batches and outside any
            transaction (SQLite's checkpoint, which cannot run inside one).
        :returns: a future of ``fn``'s result (or its exception).
        """
        if self._closed:
            # Nothing would ever take it off the queue (a timer's job in
            # flight at shutdown): fail it rather than leave it pending.
            return self._refused()
        future = self.loop.create_future()
        self._queue.put(_Job(fn, args, future, on_commit, bulk, one_statement, weight, bare))
        return future

    def read(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run the read-only ``fn(*args)`` on a reader thread.

        Reads asked for in the same pass of the loop go to the reader
        threads together, a share per thread (a reconnect storm asks for
        thousands at once): one hand-over to a thread, and one back to the
        loop, per share instead of per read.
        """
        if self._readers is None:
            return self.write(fn, *args)
        future = self.loop.create_future()
        if not self._reads:
            self.loop.call_soon(self._submit_reads)
        self._reads.append((fn, args, future))
        return future

    def upkeep(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run the maintenance job ``fn(*args)`` on the low-priority upkeep thread.

        For work that must not take turns with the loop on a busy core and
        that no request waits for (a write-ahead log checkpoint: measured,
        once a second on the loop's core it tripled the per-user p99).
        Without reader threads it runs on the writer, like reads.
        """
        if self._upkeep is None:
            return self.write(fn, *args)
        try:
            return asyncio.wrap_future(self._upkeep.submit(self._read, fn, args), loop=self.loop)
        except RuntimeError:  # the pool is shut down: the runner is closing
            return self._refused()

    def _refused(self) -> asyncio.Future[Any]:
        """A future failed as every job asked for after :meth:`close` is."""
        future = self.loop.create_future()
        future.set_exception(StorageUnavailable(_CLOSED))
        return future

    def _start_upkeep_thread(self) -> None:
        database.bind_thread(self.db)
        if sys.platform.startswith("linux"):
            # On Linux a thread has its own nice value (PRIO_PROCESS of its id).
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except OSError:
                log.debug("could not lower the upkeep thread's priority", exc_info=True)

    def _submit_reads(self) -> None:
        reads, self._reads = self._reads, []
        # Reads are queued for this only when there are reader threads (read()).
        readers = self._readers
        assert readers is not None
        shares = min(self._reader_count, len(reads))
        for i in range(shares):
            share = reads[i::shares]
            try:
                readers.submit(self._read_share, share)
            except RuntimeError:  # the pool is shut down: the runner is closing
                for _, _, future in share:
                    if not future.done():
                        future.set_exception(StorageUnavailable(_CLOSED))

    def _read_share(self, share: list[tuple[Callable[..., Any], tuple, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        for fn, args, _ in share:
            try:
                outcomes.append((True, self._read(fn, args)))
            except Exception as exc:
                outcomes.append((False, exc))
        self.loop.call_soon_threadsafe(self._settle_reads, share, outcomes)

    @staticmethod
    def _settle_reads(share: list[tuple[Any, Any, asyncio.Future[Any]]], outcomes: list[tuple[bool, Any]]) -> None:
        for (_, _, future), (ok, value) in zip(share, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def queued(self) -> int:
        """Jobs waiting for the writer (approximate; for tests and stats)."""
        return self._queue.qsize()

    def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the writer thread and block for it (start-up, CLI)."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Job(fn, args, done, None))
        return done.result()

    def close(self) -> None:
        """Finish queued writes, then stop the threads and close connections."""
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout=10)
        for pool in (self._readers, self._upkeep):
            if pool is not None:
                pool.submit(self.db.close).result(timeout=5)
                pool.shutdown(wait=True)

    def _read(self, fn: Callable[..., Any], args: tuple) -> Any:
        # Each reader thread keeps its own connection open between reads.
        try:
            self.db.connect(reuse_if_open=True)
            return fn(*args)
        except (OperationalError, InterfaceError) as exc:
            # A broken connection (database restarted) is reopened next time.
            try:
                self.db.close()
            except Exception:
                pass
            raise _translate(exc) from exc

    def _write_loop(self) -> None:
        database.bind_thread(self.db)
        held = None  # taken from the queue, but it did not fit the last batch
        while True:
            first = held if held is not None else self._queue.get()
            held = None
            if first is _STOP:
                break
            batch = [first]
            weight = first.weight
            stop = False
            while weight < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                if weight + job.weight > MAX_BATCH:
                    held = job
                    break
                batch.append(job)
                weight += job.weight
            self._run_batch(batch)
            if stop:
                break
        if not self.db.is_closed():
            self.db.close()

    def _run_batch(self, batch: list[_Job]) -> None:
        """Commit ``batch`` in one transaction; if a job fails, one by one.

        No savepoint per job: on PostgreSQL each would cost two more round
        trips per job.  Jobs are pure database work, so after a failure the
        whole transaction is rolled back and each job runs again in its own
        transaction, where a failing job fails alone.
        """
        try:
            self.db.connect(reuse_if_open=True)
            if batch[0].bare or self._one_statement(batch):
                self._run_jobs(batch)
            else:
                with self.db.atomic():
                    self._run_jobs(batch)
            return self._finish(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = _translate(exc)
                self._reset_connection_if_broken(exc)
                return self._finish(batch)
        for job in batch:
            job.result = None
            try:
                self.db.connect(reuse_if_open=True)
                with self.db.atomic():
                    job.result = job.fn(*job.args)
            except Exception as exc:
                job.error = _translate(exc)
                self._reset_connection_if_broken(exc)
        self._finish(batch)

    def _one_statement(self, batch: list[_Job]) -> bool:
        """Whether ``batch`` runs as one PostgreSQL statement (see :meth:`write`)."""
        if not self._autocommit_one_statement or not all(job.one_statement for job in batch):
            return False
        return len(batch) == 1 or (batch[0].bulk is not None and all(job.bulk is batch[0].bulk for job in batch))

    @staticmethod
    def _run_jobs(batch: list[_Job]) -> None:
        """Run every job in order, runs of one ``bulk`` kind in one call each."""
        i, n = 0, len(batch)
        while i < n:
            job = batch[i]
            end = i + 1
            if job.bulk is not None:
                while end < n and batch[end].bulk is job.bulk:
                    end += 1
            if end - i > 1:
                group = batch[i:end]
                results = job.bulk([member.args for member in group])
                for member, result in zip(group, results, strict=True):
                    member.result = result
            else:
                job.result = job.fn(*job.args)
            i = end

    def _reset_connection_if_broken(self, exc: BaseException) -> None:
        """After a driver failure, reconnect on the next job."""
        if isinstance(exc, (OperationalError, InterfaceError)):
            try:
                self.db.close()
            except Exception:
                pass

    def _finish(self, batch: list[_Job]) -> None:
        """Count the batch and hand every result or error to its caller."""
        self.batches += 1
        self.jobs += len(batch)
        sync = [job for job in batch if isinstance(job.future, concurrent.futures.Future)]
        for job in sync:
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)
        if len(sync) < len(batch):
            self.loop.call_soon_threadsafe(self._settle, [job for job in batch if job not in sync])

    @staticmethod
    def _settle(batch: list[_Job]) -> None:
        """On the loop: run after-commit callbacks in order, then resolve."""
        for job in batch:
            if job.error is None and job.on_commit is not None:
                try:
                    job.on_commit(job.result)
                except Exception:
                    log.exception("after-commit callback failed")
            if job.future.cancelled():
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)
