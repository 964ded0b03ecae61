"""The in-process domain-event bus.

Use cases announce what happened (``notification-created``, ...) without
knowing who listens; the wiring in ``server.py`` connects listeners such as
the SSE fan-out.  Emission is fire-and-forget: the notification is already
stored when it is emitted, so a failing listener is logged and reaches
neither the emitter nor the other listeners.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("notify.bus")

Handler = Callable[[Any], Any]
Middleware = Callable[[str, Any], Any]


class _Listener:
    __slots__ = ("handler", "once")

    def __init__(self, handler: Handler, once: bool) -> None:
        self.handler = handler
        self.once = once


class EventBus:
    """Named events to listeners, on one asyncio (Tornado) loop.

    :param loop: the loop listeners run on.  ``emit`` from any other thread
        (a database worker, say) is handed over to this loop, so listeners
        never run concurrently with the fan-out.  Without a loop, the loop
        running when :meth:`emit` is first called from a coroutine context
        is used; :meth:`bind` sets it explicitly.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._listeners: dict[str, list[_Listener]] = {}
        self._middleware: list[Middleware] = []
        self._loop = loop
        self._loop_thread: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run listeners on ``loop`` from now on (call from that loop's thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def on(self, name: str, handler: Handler) -> Callable[[], bool]:
        """Call ``handler(payload)`` for every ``name`` event.

        ``handler`` may be a plain function or a coroutine function.
        :returns: a function that removes this listener (as :meth:`off`).
        """
        self._listeners.setdefault(name, []).append(_Listener(handler, once=False))
        return lambda: self.off(name, handler)

    def once(self, name: str, handler: Handler) -> Callable[[], bool]:
        """Like :meth:`on`, but the listener is removed before its first call."""
        self._listeners.setdefault(name, []).append(_Listener(handler, once=True))
        return lambda: self.off(name, handler)

    def off(self, name: str, handler: Handler) -> bool:
        """Remove ``handler`` from ``name``; :returns: whether it was registered."""
        listeners = self._listeners.get(name, [])
        for index, listener in enumerate(listeners):
            if listener.handler is handler:
                del listeners[index]
                if not listeners:
                    del self._listeners[name]
                return True
        return False

    def use(self, middleware: Middleware) -> None:
        """Add a middleware: ``middleware(name, payload)`` sees every event first.

        It exists for cross-cutting concerns (logging, metrics).  It may
        return a replacement payload; ``None`` keeps the payload.  A failing
        middleware is logged and skipped.
        """
        self._middleware.append(middleware)

    def clear(self) -> None:
        """Remove every listener and middleware (tests, shutdown)."""
        self._listeners.clear()
        self._middleware.clear()

    def listener_count(self, name: str) -> int:
        """How many listeners ``name`` has."""
        return len(self._listeners.get(name, ()))

    def emit(self, name: str, payload: Any = None) -> None:
        """Announce ``name``; return at once.

        Safe from any thread: off the loop's thread the dispatch is
        scheduled onto the loop, in call order.
        """
        if self._loop is not None and not self._on_loop_thread():
            self._loop.call_soon_threadsafe(self._dispatch, name, payload)
            return
        self._dispatch(name, payload)

    async def emit_async(self, name: str, payload: Any = None) -> None:
        """Announce ``name`` and wait until every listener has finished.

        Listeners run concurrently.  Every failure is logged; the first one
        is then raised to the caller, who asked to wait for the outcome.
        """
        payload = self._apply_middleware(name, payload)
        awaitables: list[Awaitable[Any]] = []
        errors: list[BaseException] = []
        for listener in self._take(name):
            try:
                result = listener.handler(payload)
            except Exception as exc:
                self._log_failure(name, listener.handler, exc)
                errors.append(exc)
                continue
            if inspect.isawaitable(result):
                awaitables.append(result)
        if awaitables:
            outcomes = await asyncio.gather(*awaitables, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    log.error("listener for %r failed", name, exc_info=outcome)
                    errors.append(outcome)
        if errors:
            raise errors[0]

    def _on_loop_thread(self) -> bool:
        if self._loop_thread is None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                return False
            return running is self._loop
        return threading.get_ident() == self._loop_thread

    def _take(self, name: str) -> list[_Listener]:
        listeners = list(self._listeners.get(name, ()))
        for listener in listeners:
            if listener.once:
                self.off(name, listener.handler)
        return listeners

    def _apply_middleware(self, name: str, payload: Any) -> Any:
        for middleware in self._middleware:
            try:
                replaced = middleware(name, payload)
            except Exception:
                log.exception("event bus middleware %r failed on %r", middleware, name)
                continue
            if replaced is not None:
                payload = replaced
        return payload

    def _dispatch(self, name: str, payload: Any) -> None:
        payload = self._apply_middleware(name, payload)
        for listener in self._take(name):
            try:
                result = listener.handler(payload)
            except Exception as exc:
                self._log_failure(name, listener.handler, exc)
                continue
            # Most listeners are plain functions: skip the (ABC) awaitable
            # check for them, it is on the path of every delivery.
            if result is not None and inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                # Keep a reference so the task is not collected mid-flight.
                self._tasks.add(task)
                task.add_done_callback(self._task_done(name))

    def _task_done(self, name: str) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("listener for %r failed", name, exc_info=task.exception())

        return done

    @staticmethod
    def _log_failure(name: str, handler: Handler, exc: BaseException) -> None:
        log.error("listener %r for %r failed", getattr(handler, "__qualname__", handler), name, exc_info=exc)
