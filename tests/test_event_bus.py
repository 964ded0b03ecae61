"""Unit tests of ``core.fanout.event_bus.EventBus``, the in-process domain-event bus.

The bus is fire-and-forget: ``emit`` returns at once and nothing a listener
or middleware does may reach the emitter or the other listeners (failures
are logged on ``notify.bus``); ``emit_async`` is the variant that waits for
every listener and reports the first failure.  ``emit`` from a worker thread
is handed over to the loop the bus is bound to.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from core.fanout.event_bus import EventBus

pytestmark = pytest.mark.timeout(30)

BUS_LOGGER = "notify.bus"


class Boom(Exception):
    """The failure the tests' listeners raise."""


def recorder(calls: list[Any], tag: str) -> Callable[[Any], None]:
    """A sync listener that appends ``(tag, payload)`` to ``calls``."""

    def listener(payload: Any) -> None:
        calls.append((tag, payload))

    return listener


def raiser(message: str = "listener failed") -> Callable[[Any], None]:
    """A sync listener that raises :class:`Boom` with ``message``."""

    def listener(payload: Any) -> None:
        raise Boom(message)

    return listener


def bus_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The ERROR records the bus logged."""
    return [r for r in caplog.records if r.name == BUS_LOGGER and r.levelno >= logging.ERROR]


# -- on / emit / once / off ------------------------------------------------------


def test_emit_calls_listeners_in_registration_order_with_payload():
    bus = EventBus()
    calls: list[Any] = []
    for tag in "abc":
        bus.on("created", recorder(calls, tag))
    bus.emit("created", {"id": 1})
    assert calls == [("a", {"id": 1}), ("b", {"id": 1}), ("c", {"id": 1})]


def test_emit_reaches_only_listeners_of_that_name():
    bus = EventBus()
    calls: list[Any] = []
    bus.on("created", recorder(calls, "created"))
    bus.on("deleted", recorder(calls, "deleted"))
    bus.emit("deleted", 7)
    assert calls == [("deleted", 7)]


def test_emit_without_listeners_does_nothing():
    EventBus().emit("nobody-listens", 1)


def test_once_listener_fires_only_once():
    bus = EventBus()
    calls: list[Any] = []
    bus.once("created", recorder(calls, "once"))
    bus.emit("created", 1)
    bus.emit("created", 2)
    assert calls == [("once", 1)]
    assert bus.listener_count("created") == 0


def test_off_removes_listener_and_reports_it():
    bus = EventBus()
    calls: list[Any] = []
    listener = recorder(calls, "a")
    bus.on("created", listener)
    assert bus.off("created", listener) is True
    bus.emit("created", 1)
    assert calls == []


def test_off_returns_false_for_unknown_listener_or_name():
    bus = EventBus()
    bus.on("created", recorder([], "a"))
    assert bus.off("created", recorder([], "other")) is False
    assert bus.off("never-registered", recorder([], "a")) is False


def test_function_returned_by_on_unsubscribes():
    bus = EventBus()
    calls: list[Any] = []
    remove = bus.on("created", recorder(calls, "a"))
    remove()
    bus.emit("created", 1)
    assert calls == []


# -- failures never reach the emitter ------------------------------------------------


def test_failing_listener_does_not_raise_and_others_still_run(caplog):
    bus = EventBus()
    calls: list[Any] = []
    bus.on("created", recorder(calls, "before"))
    bus.on("created", raiser("kaputt"))
    bus.on("created", recorder(calls, "after"))
    with caplog.at_level(logging.ERROR, logger=BUS_LOGGER):
        bus.emit("created", 1)
    assert calls == [("before", 1), ("after", 1)]
    [record] = bus_errors(caplog)
    assert "created" in record.getMessage()
    assert isinstance(record.exc_info[1], Boom)


async def test_async_listener_is_scheduled_and_runs():
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    seen = asyncio.Event()
    received: list[Any] = []

    async def listener(payload: Any) -> None:
        await asyncio.sleep(0)
        received.append(payload)
        seen.set()

    bus.on("created", listener)
    bus.emit("created", "payload")
    await asyncio.wait_for(seen.wait(), 5)
    assert received == ["payload"]


async def test_async_listener_failure_is_logged_not_raised(caplog):
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    failed = asyncio.Event()

    async def listener(payload: Any) -> None:
        failed.set()
        raise Boom("async kaputt")

    bus.on("created", listener)
    with caplog.at_level(logging.ERROR, logger=BUS_LOGGER):
        bus.emit("created", 1)
        await asyncio.wait_for(failed.wait(), 5)
        # The failure is logged by the task's done callback, which runs
        # one loop iteration after the task finished.
        for _ in range(10):
            if bus_errors(caplog):
                break
            await asyncio.sleep(0)
    [record] = bus_errors(caplog)
    assert "created" in record.getMessage()
    assert isinstance(record.exc_info[1], Boom)


# -- emit_async ----------------------------------------------------------------------


async def test_emit_async_awaits_sync_and_async_listeners():
    bus = EventBus()
    finished: list[str] = []

    async def slow(payload: Any) -> None:
        await asyncio.sleep(0.01)
        finished.append("slow")

    bus.on("created", slow)
    bus.on("created", lambda payload: finished.append("sync"))
    await bus.emit_async("created", 1)
    assert sorted(finished) == ["slow", "sync"]


async def test_emit_async_raises_first_failure_after_all_listeners_ran(caplog):
    bus = EventBus()
    finished: list[str] = []

    async def late_success(payload: Any) -> None:
        await asyncio.sleep(0.01)
        finished.append("late")

    async def async_failure(payload: Any) -> None:
        await asyncio.sleep(0)
        raise Boom("second")

    bus.on("created", raiser("first"))
    bus.on("created", late_success)
    bus.on("created", async_failure)
    bus.on("created", lambda payload: finished.append("sync"))
    with caplog.at_level(logging.ERROR, logger=BUS_LOGGER), pytest.raises(Boom, match="first"):
        await bus.emit_async("created", 1)
    assert sorted(finished) == ["late", "sync"]
    assert len(bus_errors(caplog)) == 2


# -- middleware ----------------------------------------------------------------------


def test_middleware_sees_every_event_even_without_listeners():
    bus = EventBus()
    seen: list[Any] = []
    bus.use(lambda name, payload: seen.append((name, payload)))
    bus.on("created", lambda payload: None)
    bus.emit("created", 1)
    bus.emit("unheard", 2)
    assert seen == [("created", 1), ("unheard", 2)]


def test_middleware_can_replace_payload():
    bus = EventBus()
    calls: list[Any] = []
    bus.use(lambda name, payload: {"wrapped": payload})
    bus.use(lambda name, payload: None)  # None keeps the payload
    bus.on("created", recorder(calls, "a"))
    bus.emit("created", 1)
    assert calls == [("a", {"wrapped": 1})]


async def test_middleware_replacement_applies_to_emit_async():
    bus = EventBus()
    calls: list[Any] = []
    bus.use(lambda name, payload: payload * 10)
    bus.on("created", recorder(calls, "a"))
    await bus.emit_async("created", 2)
    assert calls == [("a", 20)]


def test_failing_middleware_is_logged_and_skipped(caplog):
    bus = EventBus()
    calls: list[Any] = []

    def broken(name: str, payload: Any) -> Any:
        raise Boom("middleware kaputt")

    bus.use(broken)
    bus.use(lambda name, payload: payload + 1)
    bus.on("created", recorder(calls, "a"))
    with caplog.at_level(logging.ERROR, logger=BUS_LOGGER):
        bus.emit("created", 1)
    assert calls == [("a", 2)]
    [record] = bus_errors(caplog)
    assert isinstance(record.exc_info[1], Boom)


def test_clear_removes_listeners_and_middleware():
    bus = EventBus()
    calls: list[Any] = []
    bus.use(lambda name, payload: calls.append(("middleware", payload)))
    bus.on("created", recorder(calls, "a"))
    bus.clear()
    bus.emit("created", 1)
    assert calls == []
    assert bus.listener_count("created") == 0


# -- threads ---------------------------------------------------------------------------


async def emit_from_thread(bus: EventBus, name: str, payloads: list[Any], expected_calls: int) -> list[tuple[int, Any]]:
    """Emit ``payloads`` from a worker thread; :returns: ``(thread id, payload)`` per call.

    Waits (bounded) until the listener has run ``expected_calls`` times.
    """
    calls: list[tuple[int, Any]] = []
    all_arrived = asyncio.Event()

    def listener(payload: Any) -> None:
        calls.append((threading.get_ident(), payload))
        if len(calls) == expected_calls:
            all_arrived.set()

    bus.on(name, listener)
    worker = threading.Thread(target=lambda: [bus.emit(name, p) for p in payloads])
    worker.start()
    await asyncio.get_running_loop().run_in_executor(None, worker.join)
    await asyncio.wait_for(all_arrived.wait(), 5)
    return calls


async def test_emit_from_worker_thread_runs_listener_on_loop_thread():
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    loop_thread = threading.get_ident()
    calls = await emit_from_thread(bus, "created", ["from-thread"], expected_calls=1)
    assert calls == [(loop_thread, "from-thread")]


async def test_emits_from_worker_thread_arrive_in_order():
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    payloads = list(range(50))
    calls = await emit_from_thread(bus, "created", payloads, expected_calls=len(payloads))
    assert [payload for _, payload in calls] == payloads
    assert {thread for thread, _ in calls} == {threading.get_ident()}
