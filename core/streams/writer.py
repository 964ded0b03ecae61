"""An event stream's connection after the HTTP layer has let go of it.

Once a stream's headers, ``: connected`` and ``ready`` are out, the stream
handler detaches the connection (``RequestHandler.detach()``, as Tornado's
WebSocket handler does) and :meth:`SocketWriter.take_over` takes the socket
out of its IOStream too.  An IOStream is made for reading protocols: it
carries two deques, read and write buffers, a Future per write and a dozen
other fields, about 2.5 KB of Python objects per connection, and every
write through it allocates a Future and a callback.  An event stream only
ever writes, so what is kept per stream is the socket, one reader
registration with the loop (to see the client leave) and this object's few
slots; a write is one ``send()``.

Only what the kernel does not take at once is held here (shared memoryviews
of the encoded frames, never copies), up to a bound: past it the write
raises ``StreamBufferFullError`` and the manager drops the stream, as it
would a slow IOStream.

The kernel's share is bounded too: the socket's send buffer is fixed at the
same size (``SO_SNDBUF``; Linux doubles it for its bookkeeping).  Left to
itself the kernel grows it up to ``net.ipv4.tcp_wmem``'s maximum, 4 MiB by
default, and on loopback (a proxy on the same machine) it does so at once:
each client that stops reading would then hold megabytes of the server's
memory before the bound above is even reached.  An event stream needs no
such buffer; frames are small, and a replay waits for each page to drain.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any, Callable

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from core.streams.sse import Frame

#: The last chunk of a chunked response: the browser sees a clean end.
TERMINATOR = b"0\r\n\r\n"

#: The smallest kernel send buffer a stream is given (bytes, before the
#: kernel doubles it), whatever ``--max-buffer-kb`` says.
MIN_SEND_BUFFER = 16 * 1024


def send_queued(sock: socket.socket, queue: "collections.deque[memoryview]") -> int:
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


class SocketWriter:
    """Writes a detached event stream's frames straight to its socket.

    Use :meth:`take_over`.  ``write`` raises ``StreamClosedError`` once the
    connection is closed and ``StreamBufferFullError`` past ``max_buffer``
    unsent bytes; ``on_close`` runs once, whoever closes the connection.
    """

    __slots__ = ("_sock", "_fd", "_loop", "chunked", "max_buffer", "_on_close", "_pending", "_pending_size",
                 "_waiters", "_closing", "__weakref__")

    def __init__(self, sock: socket.socket, chunked: bool, max_buffer: int, on_close: Callable[[], Any] | None) -> None:
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self.chunked = chunked
        self.max_buffer = max_buffer
        self._on_close = on_close
        #: Bytes the kernel has not taken yet (None when there are none).
        self._pending: collections.deque[memoryview] | None = None
        self._pending_size = 0
        #: Futures waiting for the pending bytes to leave (drain, finish).
        self._waiters: list[asyncio.Future[None]] | None = None
        self._closing = False
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Frames are small and each must leave at once, not wait for
            # the previous one's ACK (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # Denial-of-service guard: a client that stops reading holds at
            # most this much kernel memory (see the module docstring).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(max_buffer, MIN_SEND_BUFFER))
        except OSError:
            pass
        # A client has nothing to send on an event stream: readable means it
        # left (EOF, reset) or is sending what nobody will read.
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    def take_over(cls, stream: IOStream, chunked: bool, max_buffer: int, on_close: Callable[[], Any]) -> "SocketWriter | None":
        """Take the socket out of a detached IOStream whose writes have all left.

        :param chunked: whether the response uses chunked transfer encoding
            (HTTP/1.1); an HTTP/1.0 response is close-delimited and gets
            the bare frames.
        :returns: the writer, or None if the connection is already gone or
            the client sent more than its request (``on_close`` has run).
        """
        if isinstance(stream, socket.socket):
            # core.transport.http1's connection hands over the socket itself.
            if stream.fileno() < 0:
                on_close()
                return None
            return cls(stream, chunked, max_buffer, on_close)
        sock = stream.socket
        if stream.closed() or sock is None or stream._write_buffer or stream._read_buffer_size:
            # Closed, or unsent bytes still in the IOStream (the handler
            # flushed, so not expected), or bytes after the request that no
            # one would ever read.
            stream.close()
            on_close()
            return None
        # Tornado forgets the socket without closing it: the IOStream is
        # dropped with the handler, and the socket lives on here.
        stream.io_loop.remove_handler(sock)
        stream.socket = None  # type: ignore[assignment]
        stream._closed = True
        return cls(sock, chunked, max_buffer, on_close)

    # -- writing -------------------------------------------------------------

    def write(self, frame: Frame) -> None:
        """Send ``frame`` (or queue what the kernel does not take now)."""
        self._send(frame.chunked if self.chunked else frame.raw)

    def _send(self, data: bytes, bounded: bool = True) -> None:
        sock = self._sock
        if sock is None or self._closing:
            raise StreamClosedError()
        if self._pending is not None:
            if bounded and self._pending_size + len(data) > self.max_buffer:
                raise StreamBufferFullError("Reached maximum write buffer size")
            self._pending.append(memoryview(data))
            self._pending_size += len(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.close()
            raise StreamClosedError(real_error=exc) from None
        if sent != len(data):
            self._queue_rest(data, sent, bounded)

    def _queue_rest(self, data: bytes, sent: int, bounded: bool) -> None:
        """Hold what the kernel did not take and send it when it can."""
        rest = memoryview(data)[sent:]
        if bounded and len(rest) > self.max_buffer:
            raise StreamBufferFullError("Reached maximum write buffer size")
        self._pending = collections.deque((rest,))
        self._pending_size = len(rest)
        self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        pending, sock = self._pending, self._sock
        if pending is None or sock is None:
            return
        try:
            self._pending_size -= send_queued(sock, pending)
        except OSError:
            self.close()
            return
        if pending:
            return
        self._pending = None
        self._loop.remove_writer(self._fd)
        if self._closing:
            self.close()
        else:
            self._wake(None)

    async def drain(self) -> None:
        """Wait until everything written so far has left user space.

        :raises StreamClosedError: the connection closed first.
        """
        if self._sock is None:
            raise StreamClosedError()
        if self._pending is None:
            return
        waiter = self._loop.create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter

    # -- ending --------------------------------------------------------------

    def finish(self) -> "asyncio.Future[None] | None":
        """End the response cleanly, then close the connection.

        Chunked: the zero-length chunk goes out after every queued frame
        (past the bound if need be: it is five bytes), and the connection
        closes once it has left.  :returns: a future resolved at that
        close, or None if the connection is closed already.
        """
        if self._sock is None:
            return None
        if self.chunked and not self._closing:
            try:
                self._send(TERMINATOR, bounded=False)
            except StreamClosedError:
                return None
        if self._pending is None:
            self.close()
            return None
        self._closing = True
        done = self._loop.create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(done)
        return done

    def close(self) -> None:
        """Close the connection now (unsent bytes are dropped); idempotent."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._loop.remove_reader(self._fd)
        if self._pending is not None:
            self._loop.remove_writer(self._fd)
            self._pending = None
        sock.close()
        self._wake(StreamClosedError() if not self._closing else None)
        # The callback (the manager's unsubscribe of this device) refers to
        # the device, which refers to this writer: a reference cycle.  The
        # server freezes long-lived objects out of the garbage collector's
        # sight (server.tune_gc), so a cycle left here would never be
        # collected: break it, and reference counting frees the stream.
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._sock is None

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.recv(1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        # End of stream, a reset, or bytes nobody will read: all end it.
        self.close()

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
