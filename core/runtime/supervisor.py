"""Several serving processes on one machine: fork, watch, restart, stop.

``python server.py --processes N`` runs a :class:`Supervisor` in the parent
process.  The parent only binds the listening sockets (before forking, so
every child inherits them) and manages children; it never builds an
application, a loop, a database connection or a thread, so nothing of that
kind is ever shared across ``fork()``.  Each child runs the ordinary serve
path with its own IOLoop, database connections and instance id::

    parent: bind sockets ──fork──> child 0 ──"ready"──> fork child 1 ... N-1
       │ SIGTERM/SIGINT: forward to every child, close its copies of the
       │                 listening sockets, wait (SIGKILL after STOP_TIMEOUT)
       │ SIGUSR1:        forward (each child logs its connection state)
       │ a child dies:   restart it after RESTART_DELAY, doubled for each
       │                 quick death up to RESTART_DELAY_MAX
       └ all children gone after a signal: exit 0 (1 if one of them failed)

Children start one after another, each once the previous one serves, so
they never race to create the schema; a child that fails before serving
during that first start stops the whole start (its error is the operator's
to fix).  Later, a child that cannot start again (database down) is retried
with the backoff instead.  Each child watches a pipe from the parent: if
the parent dies (even by SIGKILL), the child shuts down gracefully rather
than serve on, orphaned, on the port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

log = logging.getLogger("notify.supervisor")

#: Seconds before a dead child is started again (doubles per quick death).
RESTART_DELAY = 1.0
#: The longest wait between restarts of a child that keeps dying.
RESTART_DELAY_MAX = 30.0
#: A child that served this long before dying restarts after RESTART_DELAY again.
STABLE_AFTER = 60.0
#: Seconds after a stop signal before children still running are killed;
#: below the contract's 10 s, as each child needs at most about 9.
STOP_TIMEOUT = 9.5

#: What ``signal.signal`` takes and returns: a function, ``SIG_DFL`` or
#: ``SIG_IGN`` (ints), or None for a handler not set from Python.
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class ChildLink:
    """What a child knows of its parent: how to say it serves, and when the parent is gone."""

    def __init__(self, ready_fd: int, parent_fd: int) -> None:
        self._ready_fd = ready_fd
        self._parent_fd = parent_fd

    def serving(self, stop: Callable[[], None]) -> None:
        """Call on the child's running loop once it serves.

        Tells the parent (which starts the next child or counts a restart
        as done) and arranges for ``stop`` (the graceful shutdown) to run if
        the parent dies: its end of the pipe closes and ours reads EOF.
        """
        try:
            os.write(self._ready_fd, b"r")
        finally:
            os.close(self._ready_fd)
        loop = asyncio.get_running_loop()

        def parent_gone() -> None:
            loop.remove_reader(self._parent_fd)
            log.warning("the supervising process is gone: shutting down")
            stop()

        loop.add_reader(self._parent_fd, parent_gone)


#: ``child_main(slot, link)`` runs in a fresh child and returns its exit code.
ChildMain = Callable[[int, ChildLink], int]


@dataclasses.dataclass
class _Child:
    slot: int
    pid: int
    ready_fd: int | None
    started_at: float
    ready: bool = False
    exit_code: int | None = None


class Supervisor:
    """Run ``count`` children of ``child_main`` until SIGTERM or SIGINT.

    :param sockets: per slot, the listening sockets its child serves (the
        parent keeps them open, so a restarted child takes over its slot's
        socket and the connections waiting in its backlog).
    """

    def __init__(self, count: int, child_main: ChildMain, sockets: Sequence[Sequence[socket.socket]]) -> None:
        if count < 1 or len(sockets) != count:
            raise ValueError("one list of sockets per child is needed")
        self.count = count
        self.child_main = child_main
        self.sockets = [list(group) for group in sockets]
        self._children: dict[int, _Child] = {}
        self._restart_at: dict[int, float] = {}
        self._delay = [RESTART_DELAY] * count
        self._signals: list[int] = []
        self._stopping = False
        #: True while the children start one by one for the first time.
        self._starting = True
        self._stop_deadline: float | None = None
        self._failed = False
        self._selector = selectors.DefaultSelector()
        # Signal handlers only note the signal; the wake-up pipe makes the
        # parent's select() return, and the loop acts on it.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        # Only the parent holds the write end, and never writes: children
        # read EOF on their end when the parent is gone.
        self._alive_r, self._alive_w = os.pipe()

    # -- the parent ---------------------------------------------------------

    def run(self) -> int:
        """Start the children, supervise them, stop them on a signal; :returns: the exit code."""
        previous = self._install_signals()
        try:
            for slot in range(self.count):
                if self._stopping:
                    break
                child = self._spawn(slot)
                while not child.ready and child.pid in self._children and not self._stopping:
                    self._poll(self._timeout())
                if child.exit_code is not None and not child.ready and not self._stopping:
                    # The first start failed (database unreachable, bad key
                    # file...): the child printed why; stop the others.
                    log.error("process %d exited with %s before serving; stopping", slot, _describe(child.exit_code))
                    self._begin_stop(signal.SIGTERM, "start-up failed")
                    while self._children:
                        self._poll(self._timeout())
                    return _status(child.exit_code) or 1
            self._starting = False
            if not self._stopping:
                log.info(
                    "%d processes serving (pids %s)", len(self._children), " ".join(str(pid) for pid in self._children)
                )
            while self._children or (self._restart_at and not self._stopping):
                self._poll(self._timeout())
            return 1 if self._failed else 0
        finally:
            self._restore_signals(previous)
            self._close_sockets()
            self._selector.close()
            for fd in (self._wake_r, self._wake_w, self._alive_r, self._alive_w):
                os.close(fd)

    def _install_signals(self) -> tuple[int, dict[signal.Signals, _SignalHandler]]:
        """Handle the supervisor's signals; :returns: the wake-up fd and handlers they replace."""
        handlers: dict[signal.Signals, _SignalHandler] = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD):
            handlers[signum] = signal.signal(signum, self._note_signal)
        return signal.set_wakeup_fd(self._wake_w), handlers

    @staticmethod
    def _restore_signals(previous: tuple[int, dict[signal.Signals, _SignalHandler]]) -> None:
        wakeup_fd, handlers = previous
        signal.set_wakeup_fd(wakeup_fd)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    def _note_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGCHLD:
            self._signals.append(signum)

    def _timeout(self) -> float | None:
        """Seconds until the next restart or the stop deadline (None: wait for an event)."""
        now = time.monotonic()
        moments = list(self._restart_at.values()) if not self._stopping else []
        if self._stopping and self._children and self._stop_deadline is not None:
            moments.append(self._stop_deadline)
        return max(0.0, min(moments) - now) if moments else None

    def _poll(self, timeout: float | None) -> None:
        """Wait for a signal, a child's readiness or a deadline, then act on all of them."""
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                self._read_ready(key.data)
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGUSR1:
                self._forward(signum)
            else:
                self._begin_stop(signum)
        self._reap()
        now = time.monotonic()
        if self._stopping:
            if self._children and self._stop_deadline is not None and now >= self._stop_deadline:
                log.error(
                    "processes %s still running %.1f s after the signal: killing them",
                    " ".join(str(pid) for pid in self._children),
                    STOP_TIMEOUT,
                )
                self._failed = True
                self._forward(signal.SIGKILL)
                # Nothing left to wait for but the reaper.
                self._stop_deadline = None
            return
        for slot, moment in list(self._restart_at.items()):
            if now >= moment:
                del self._restart_at[slot]
                self._spawn(slot)

    def _read_ready(self, child: _Child) -> None:
        """Read a child's "serving" byte (or EOF: it died first)."""
        fd = child.ready_fd
        if fd is None:
            return
        try:
            data = os.read(fd, 16)
        except OSError:
            data = b""
        self._selector.unregister(fd)
        os.close(fd)
        child.ready_fd = None
        if data:
            child.ready = True
            log.debug("process %d (pid %d) serving", child.slot, child.pid)

    def _begin_stop(self, signum: int, reason: str | None = None) -> None:
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = time.monotonic() + STOP_TIMEOUT
            self._restart_at.clear()
            log.info("%s: stopping %d processes", reason or signal.Signals(signum).name, len(self._children))
            # The children close their copies when they stop accepting; once
            # ours are closed too, new connections are refused at once (and go
            # to another instance) instead of waiting in a backlog nobody reads.
            self._close_sockets()
        # Forwarded again on a second signal: harmless, a child's stop is idempotent.
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for pid in list(self._children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is None:
                continue
            if child.ready_fd is not None:
                # It may have said "serving" just before it died.
                self._read_ready(child)
            code = child.exit_code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                # A child still starting when the signal came ends by the
                # signal itself (it has no streams to end): a clean stop too.
                if code not in (0, -signal.SIGTERM, 128 + signal.SIGINT):
                    self._failed = True
                    log.warning("process %d (pid %d) exited with %s", child.slot, pid, _describe(code))
                continue
            if self._starting and not child.ready:
                # A first start that failed: run() reports it and stops.
                continue
            lived = time.monotonic() - child.started_at
            if lived >= STABLE_AFTER:
                self._delay[child.slot] = RESTART_DELAY
            delay = self._delay[child.slot]
            self._delay[child.slot] = min(delay * 2, RESTART_DELAY_MAX)
            self._restart_at[child.slot] = time.monotonic() + delay
            log.warning(
                "process %d (pid %d) exited with %s after %.1f s; restarting it in %.1f s",
                child.slot,
                pid,
                _describe(code),
                lived,
                delay,
            )

    # -- forking ------------------------------------------------------------

    def _spawn(self, slot: int) -> _Child:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(ready_r)
                self._become_child(slot)
                code = self.child_main(slot, ChildLink(ready_w, self._alive_r))
            except KeyboardInterrupt:
                code = 128 + signal.SIGINT
            except SystemExit as exc:
                code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(ready_w)
        child = _Child(slot=slot, pid=pid, ready_fd=ready_r, started_at=time.monotonic())
        self._children[pid] = child
        self._selector.register(ready_r, selectors.EVENT_READ, child)
        return child

    def _become_child(self, slot: int) -> None:
        """In a new child: drop the parent's signal handling and descriptors."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Until serve() installs its own handler, a forwarded SIGUSR1 must
        # not kill a child that is still starting.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w, self._alive_w):
            os.close(fd)
        for other in self._children.values():
            if other.ready_fd is not None:
                os.close(other.ready_fd)
        mine = {id(sock) for sock in self.sockets[slot]}
        for group in self.sockets:
            for sock in group:
                if id(sock) not in mine:
                    sock.close()
        self._children = {}

    def _close_sockets(self) -> None:
        for group in self.sockets:
            for sock in group:
                sock.close()


def _status(code: int) -> int:
    """A shell-style exit status: 128 + N for death by signal N."""
    return code if code >= 0 else 128 - code


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
