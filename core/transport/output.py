"""The bytes a socket's kernel buffer has not taken yet: one implementation for every socket.

Both an HTTP connection (:mod:`core.transport.http1`) and an event stream's
writer (:mod:`core.streams.writer`) write the same way: ``send()`` at once,
and only what the kernel does not take is held, as memoryviews of the
caller's bytes (shared, never copied: one encoded frame can sit in the
buffers of thousands of slow streams for the cost of one), to be sent when
the socket is writable again.  Whoever owns the socket decides what a bound
means (a stream drops a slow reader past it; a connection stops starting
pipelined requests); this class only counts.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Protocol

from tornado.iostream import StreamClosedError


def send_queued(sock: socket.socket, queue: collections.deque[memoryview]) -> int:
    """Send ``queue``'s views in order, as far as the kernel takes them now.

    What is sent leaves the queue (a view partly sent is cut to the rest).

    :returns: the bytes sent.
    :raises OSError: the connection failed.
    """
    total = 0
    while queue:
        head = queue[0]
        try:
            sent = sock.send(head)
        except (BlockingIOError, InterruptedError):
            break
        total += sent
        if sent < len(head):
            queue[0] = head[sent:]
            break
        queue.popleft()
    return total


class OutputOwner(Protocol):
    """Who owns a socket's :class:`Output`, and hears about it."""

    def output_failed(self, error: OSError) -> None:
        """A send failed: the connection is gone (nothing is sent after it)."""

    def output_drained(self) -> None:
        """Everything held has been sent."""


class Output:
    """What is written to one socket and not yet taken by its kernel.

    Used as a part (an HTTP connection has one) or as a base class (an
    event stream's writer is one, so that each of thousands of streams
    costs one object, and a delivery one call down to ``send()``).

    :param sock: a non-blocking socket.
    :param loop: the loop whose writer callback sends the rest.
    :param owner: told when a send fails and each time what was held has
        all been sent (a reference, not two bound methods: an event stream
        keeps one of these for hours, thousands at a time).
    """

    __slots__ = ("_sock", "_fd", "_loop", "_queue", "pending", "_waiters", "_owner")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, owner: OutputOwner) -> None:
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._queue: collections.deque[memoryview] | None = None
        #: Bytes held, not yet taken by the kernel.
        self.pending = 0
        self._waiters: list[asyncio.Future[None]] | None = None
        #: None once closed (no cycle left behind), as ``_sock`` is.
        self._owner: OutputOwner | None = owner

    def send(self, data: bytes) -> None:
        """Send ``data`` now, holding what the kernel does not take (after anything held already)."""
        sock = self._sock
        if sock is None or not data:
            return
        if self._queue is not None:
            self._queue.append(memoryview(data))
            self.pending += len(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            assert self._owner is not None  # open: _sock was there
            self._owner.output_failed(exc)
            return
        if sent < len(data):
            self._queue = collections.deque((memoryview(data)[sent:],))
            self.pending = len(data) - sent
            self._loop.add_writer(self._fd, self._on_writable)

    def drained(self) -> asyncio.Future[None] | None:
        """A future resolved once everything held so far has been sent; None when nothing is held.

        It fails with ``StreamClosedError`` if the output is dropped first.
        """
        if self._queue is None:
            return None
        waiter = self._loop.create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        return waiter

    def _on_writable(self) -> None:
        queue, sock = self._queue, self._sock
        if queue is None or sock is None:
            return
        owner = self._owner
        assert owner is not None  # open: _sock was there
        try:
            self.pending -= send_queued(sock, queue)
        except OSError as exc:
            owner.output_failed(exc)
            return
        if queue:
            return
        self._queue = None
        self._loop.remove_writer(self._fd)
        self._wake(None)
        owner.output_drained()

    def drop(self, error: BaseException | None = None) -> None:
        """Drop what is held and stop sending (idempotent); waiters get ``error`` (or their result).

        The socket itself is its owner's to close.
        """
        if self._sock is None:
            return
        self._sock = None
        if self._queue is not None:
            self._loop.remove_writer(self._fd)
            self._queue = None
        self.pending = 0
        self._owner = None
        self._wake(error)

    def _wake(self, error: BaseException | None) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
                # Nobody may be awaiting it (shutdown's wait): no warning.
                waiter.exception()


def closed_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """A future already failed with ``StreamClosedError`` (what writing to a closed connection returns)."""
    future = loop.create_future()
    future.set_exception(StreamClosedError())
    future.exception()  # nobody may look: do not log it as unretrieved
    return future
