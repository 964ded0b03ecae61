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
import socket
from collections.abc import Callable
from typing import Any

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from core.streams.sse import Frame
from core.transport.output import Output

#: The last chunk of a chunked response: the browser sees a clean end.
TERMINATOR = b"0\r\n\r\n"

#: The smallest kernel send buffer a stream is given (bytes, before the
#: kernel doubles it), whatever ``--max-buffer-kb`` says.
MIN_SEND_BUFFER = 16 * 1024


class SocketWriter(Output):
    """Writes a detached event stream's frames straight to its socket.

    Use :meth:`take_over`.  It is the stream's :class:`~core.transport.output.Output`
    (what the kernel has not taken yet), with the stream's rules on top:
    ``write`` raises ``StreamClosedError`` once the connection is closed
    and ``StreamBufferFullError`` past ``max_buffer`` unsent bytes;
    ``on_close`` runs once, whoever closes the connection.
    """

    __slots__ = ("chunked", "max_buffer", "_on_close", "_closing", "__weakref__")

    def __init__(self, sock: socket.socket, chunked: bool, max_buffer: int, on_close: Callable[[], Any] | None) -> None:
        super().__init__(sock, asyncio.get_running_loop(), self)
        self.chunked = chunked
        self.max_buffer = max_buffer
        self._on_close = on_close
        #: finish() was called: the connection closes once the output drains.
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
    def take_over(
        cls, stream: socket.socket | IOStream, chunked: bool, max_buffer: int, on_close: Callable[[], Any]
    ) -> SocketWriter | None:
        """Take the socket out of a detached connection (a socket, or an IOStream whose writes have all left).

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
        # Tornado's own HTTPServer (the application served without
        # core.transport, as the tests that compare the two do) hands over
        # an IOStream.
        sock = stream.socket
        if stream.closed() or sock is None or stream.writing() or stream._read_buffer_size:
            # Closed, or unsent bytes still in the IOStream (the handler
            # flushed, so not expected), or bytes after the request that no
            # one would ever read (no public way to know: a private field of
            # Tornado 6.6, see docs/ARCHITECTURE.md).
            stream.close()
            on_close()
            return None
        # Tornado forgets the socket without closing it: the IOStream is
        # dropped with the handler, and the socket lives on here.
        stream.io_loop.remove_handler(sock)
        # Tornado annotates the attribute as never None, yet sets it to None
        # itself when it closes (with the same ignore in its own code).
        stream.socket = None  # type: ignore[assignment]
        return cls(sock, chunked, max_buffer, on_close)

    # -- writing -------------------------------------------------------------

    def write(self, frame: Frame) -> None:
        """Send ``frame`` (or hold what the kernel does not take now), within the bound."""
        if self._sock is None or self._closing:
            raise StreamClosedError()
        data = frame.chunked if self.chunked else frame.raw
        pending = self.pending
        if pending and pending + len(data) > self.max_buffer:
            raise StreamBufferFullError("Reached maximum write buffer size")
        self.send(data)
        if self.pending > self.max_buffer:
            raise StreamBufferFullError("Reached maximum write buffer size")
        if self._sock is None:
            raise StreamClosedError()

    def output_failed(self, error: OSError) -> None:
        """A send failed: the client is gone."""
        self.close()

    def output_drained(self) -> None:
        """Everything written has left user space: a finishing stream closes now."""
        if self._closing:
            self.close()

    async def drain(self) -> None:
        """Wait until everything written so far has left user space.

        :raises StreamClosedError: the connection closed first.
        """
        if self._sock is None:
            raise StreamClosedError()
        waiter = self.drained()
        if waiter is not None:
            await waiter

    # -- ending --------------------------------------------------------------

    def finish(self) -> asyncio.Future[None] | None:
        """End the response cleanly, then close the connection.

        Chunked: the zero-length chunk goes out after every queued frame
        (past the bound if need be: it is five bytes), and the connection
        closes once it has left.  :returns: a future resolved at that
        close, or None if the connection is closed already.
        """
        if self._sock is None:
            return None
        if self.chunked and not self._closing:
            # Past the bound if need be: it is five bytes.
            self.send(TERMINATOR)
            if self._sock is None:
                return None
        done = self.drained()
        if done is None:
            self.close()
            return None
        self._closing = True
        return done

    def close(self) -> None:
        """Close the connection now (unsent bytes are dropped); idempotent."""
        sock = self._sock
        if sock is None:
            return
        self._loop.remove_reader(self._fd)
        # Whoever waits for a finishing stream sees it end; a drain sees it lost.
        self.drop(None if self._closing else StreamClosedError())
        sock.close()
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
