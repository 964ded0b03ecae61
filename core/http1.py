"""HTTP/1.1 connections for Tornado's application layer, parsed by httptools.

Tornado's ``HTTPServer`` reads every request through ``HTTP1Connection`` and
an ``IOStream``: coroutines and Futures per read, a regex search for the end
of the headers, header parsing in Python, a Future per write, and two epoll
changes per request.  Profiling the create path showed that layer at about
half of a request's CPU (``bench/bare_tornado.py`` measures it alone).
This module is the same layer, smaller: the socket is read from one loop
reader callback, `httptools <https://github.com/MagicStack/httptools>`_
(llhttp, the parser of Node.js) parses, and responses go to
``socket.send`` directly, buffered only when the kernel does not take them.

What the application sees does not change: each request goes to
``delegate.start_request(conn, conn)`` (a ``tornado.web.Application``, or
anything with that interface) and this connection implements Tornado's
``httputil.HTTPConnection`` for it (``write_headers``, ``write``,
``finish``, ``set_close_callback``, ``set_max_body_size``, ``detach``), with
Tornado's response rules: chunked output when an HTTP/1.1 response has no
``Content-Length``, ``Connection: close`` when the connection will close,
keep-alive for HTTP/1.0 only when asked, a request answered before its body
was read closes its connection afterwards (here after a lingering drain, so
the client still sees the answer).

Requests on one connection are served one at a time, in order (pipelined
requests wait, and reading stops while too many wait).  A malformed request
gets a JSON 400 and the connection closes.  The idle and body deadlines
are kept in one dict swept periodically (no timer per request).
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import socket
from typing import Any, Callable

import httptools
from tornado import httputil, netutil
from tornado.iostream import StreamClosedError
from tornado.ioloop import IOLoop, PeriodicCallback

from core.sockwriter import send_queued

log = logging.getLogger("notify.http1")

#: Bytes read from a socket at once (into one buffer shared by every connection).
READ_SIZE = 64 * 1024
#: Pipelined requests parsed ahead of the one being served, at most, before
#: reading pauses.
MAX_QUEUED = 16
#: Body bytes held for a request whose handler is not taking them yet, at
#: most, before reading pauses.
HIGH_WATER = 64 * 1024
#: A connection closed with its request body unread is drained this long and
#: this much first (see :meth:`Connection._linger`).
LINGER_SECONDS = 5.0
LINGER_BYTES = 64 * 1024 * 1024

#: Reason phrases by status code.
REASONS = {code: httputil.responses.get(code, "Unknown") for code in range(100, 600)}
_CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"
_DISCONNECT = (errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT, errno.ENOTCONN)


def _bad_request(message: str) -> bytes:
    """The answer to a request that cannot be parsed: a JSON 400, then close."""
    body = json.dumps({"error": {"code": "bad_request", "message": message}}, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Cache-Control: no-store\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


#: Tornado's ``Http-Header-Case`` for a header name (cached there).
_normalize = httputil._normalize_header


class Headers(httputil.HTTPHeaders):
    """A request's headers, filled straight from what llhttp parsed.

    Tornado's ``HTTPHeaders.add`` checks every name and value against the
    HTTP grammar with a regular expression, which llhttp has done already,
    and its ``get`` of an absent name raises and catches ``KeyError`` (the
    ``Mapping`` default): about 8% of a reconnect's CPU for the lookups of
    headers a request does not have (``Origin``, ``Connection``, ...).
    Both use ``HTTPHeaders``' internal ``_as_list`` of Tornado 6.6, which
    ``requirements.txt`` pins.
    """

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """The combined value of ``name``, or ``default`` when absent (no exception raised)."""
        values = self._as_list.get(_normalize(name))
        if values is None:
            return default
        return values[0] if len(values) == 1 else ",".join(values)


class _Context:
    """What ``HTTPServerRequest`` reads from ``connection.context``."""

    __slots__ = ("remote_ip", "protocol", "address")

    def __init__(self, family: int, address: Any) -> None:
        self.address = address
        self.remote_ip = address[0] if family in (socket.AF_INET, socket.AF_INET6) and address else "0.0.0.0"
        self.protocol = "http"

    def __str__(self) -> str:
        return self.remote_ip


class _Request:
    """One request as parsed, waiting for (or in) its turn."""

    __slots__ = ("start_line", "headers", "chunks", "complete", "body_size")

    def __init__(self) -> None:
        self.start_line: httputil.RequestStartLine | None = None
        self.headers: httputil.HTTPHeaders | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.complete = False
        self.body_size = 0


class Connection(httputil.HTTPConnection):
    """One client connection: parses requests, serves them in order, writes answers.

    Created by :class:`HTTP1Server` for each accepted socket.
    """

    def __init__(self, server: "HTTP1Server", sock: socket.socket, address: Any) -> None:
        self.server = server
        self.context = _Context(sock.family, address)
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._loop = server.loop
        self._parser: Any = httptools.HttpRequestParser(self)
        self._queue: collections.deque[_Request] = collections.deque()
        self._parsing: _Request | None = None
        self._url: list[bytes] = []
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_size = 0
        self._in_head = False
        self._stop_parsing = False
        # The request being served (the queue's head).
        self._delegate: httputil.HTTPMessageDelegate | None = None
        self._ready = False  # the delegate takes body chunks
        self._read_finished = False
        self._write_finished = False
        self._response_started = False
        self._chunking_output = False
        self._expected_remaining: int | None = None
        self._disconnect_on_finish = False
        self._max_body_size = server.max_body_size
        self._close_callback: Callable[[], None] | None = None
        # Output the kernel did not take yet.
        self._out: collections.deque[memoryview] = collections.deque()
        self._out_size = 0
        self._writing = False
        self._drain_waiters: list[Any] = []
        self._close_after_flush = False
        self._lingering = False
        self._linger_left = 0
        self._reading = False
        self._closed = False
        self._resume_reading()

    # -- reading ---------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading and not self._closed and self._sock is not None:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        buffer = self.server.buffer
        try:
            n = sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if n == 0:
            self.close()
            return
        if self._lingering:
            self._linger_left -= n
            if self._linger_left <= 0:
                self.close()
            return
        if self._stop_parsing:
            return
        data = memoryview(buffer)[:n]
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are not served here: answer the request as a plain
            # one, then close (nothing after it is read).
            if self._parsing is not None and self._parsing.headers is not None:
                self.on_message_complete()
            self._stop_parsing = True
            self._disconnect_after_queue()
        except httptools.HttpParserCallbackError:
            log.exception("serving a request failed; closing its connection")
            self.close()
            return
        except httptools.HttpParserError as exc:
            self._malformed(str(exc) or "malformed request")
            return
        finally:
            data.release()
        if self._in_head:
            # Counted by reads: at most one read more than the header block.
            self._head_bytes += n
            if self._head_bytes > self.server.max_header_size:
                # Tornado's behaviour: a header block it will not buffer ends
                # the connection without an answer.
                self.close()
                return
        if len(self._queue) > MAX_QUEUED:
            self._pause_reading()

    def _malformed(self, reason: str) -> None:
        """Input that cannot be parsed: nothing after it is read."""
        self._stop_parsing = True
        self._pause_reading()
        head = self._queue[0] if self._queue else None
        if head is not None and (head.complete or self._response_started):
            # The request being served is whole (or already answering):
            # finish it, then close.
            while len(self._queue) > 1:
                self._queue.pop()
            return
        self._queue.clear()
        self._send(_bad_request("the request could not be parsed: " + reason.rstrip(".")))
        self._close_after_flush = True
        self._maybe_close()

    def _disconnect_after_queue(self) -> None:
        self._pause_reading()
        if not self._queue:
            self._close_after_flush = True
            self._maybe_close()

    # httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts."""
        if self._stop_parsing:
            return
        self._parsing = _Request()
        self._url = []
        self._fields = []
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        if self.server.deadlines.get(self) is None:
            self.server.deadlines[self] = self._loop.time() + self.server.idle_timeout

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self._url.append(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field."""
        self._fields.append((name, value))
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        """The header block is in: queue the request, serve it if it is first."""
        request = self._parsing
        if request is None or self._stop_parsing:
            return
        self._in_head = False
        if self._head_size > self.server.max_header_size:
            # A header block too large to hold: the connection ends
            # without an answer, as with Tornado.
            self._stop_parsing = True
            self._loop.call_soon(self.close)
            return
        parser = self._parser
        version = "HTTP/" + parser.get_http_version()
        method = parser.get_method().decode("latin1")
        uri = b"".join(self._url).decode("latin1")
        headers = Headers()
        fields = headers._as_list
        for name, value in self._fields:
            norm = _normalize(name.decode("latin1"))
            text = value.decode("latin1").strip()
            known = fields.get(norm)
            if known is None:
                fields[norm] = [text]
            else:
                known.append(text)
        request.start_line = httputil.RequestStartLine(method, uri, version)
        request.headers = headers
        self._url = []
        self._fields = []
        self.server.deadlines[self] = self._loop.time() + self.server.body_timeout
        self._queue.append(request)
        if len(self._queue) == 1:
            self._start()

    def on_body(self, body: bytes) -> None:
        """A piece of the body."""
        request = self._parsing
        if request is None or self._stop_parsing:
            return
        request.body_size += len(body)
        if request is self._queue[0] and self._ready and not request.chunks:
            self._deliver(body)
        else:
            request.chunks.append(body)
            if sum(len(chunk) for chunk in request.chunks) > HIGH_WATER:
                self._pause_reading()

    def on_message_complete(self) -> None:
        """The request is read."""
        request = self._parsing
        if request is None or request.complete or self._stop_parsing:
            return
        request.complete = True
        self._parsing = None
        self.server.deadlines.pop(self, None)
        if request is self._queue[0] and self._ready:
            self._feed_delegate()

    # -- serving -----------------------------------------------------------------

    def _start(self) -> None:
        """Serve the queue's head."""
        request = self._queue[0]
        assert request.start_line is not None and request.headers is not None
        self._read_finished = False
        self._write_finished = False
        self._response_started = False
        self._chunking_output = False
        self._expected_remaining = None
        self._max_body_size = self.server.max_body_size
        self._disconnect_on_finish = not _can_keep_alive(request.start_line, request.headers)
        self._ready = False
        self._delegate = self.server.delegate.start_request(self, self)
        waiting = self._delegate.headers_received(request.start_line, request.headers)
        if self._delegate is None:
            return  # detached or closed meanwhile
        if waiting is not None:
            # Reading goes on meanwhile (pausing and resuming would cost
            # two epoll changes per request): body bytes wait in the
            # request, up to HIGH_WATER (see on_body).
            self._loop.create_task(self._after(waiting))
        else:
            self._headers_taken()

    async def _after(self, waiting: Any) -> None:
        try:
            await waiting
        except Exception:
            log.exception("request delegate failed")
        self._headers_taken()

    def _headers_taken(self) -> None:
        """The delegate has the headers (and prepared): the body may flow."""
        if self._delegate is None or self._closed:
            return
        request = self._queue[0]
        headers = request.headers
        assert headers is not None
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self._max_body_size and not self._write_finished:
            self._malformed("Content-Length too long")
            return
        if (headers.get("Expect", "").lower() == "100-continue" and not self._write_finished
                and not request.complete and request.headers.get("Content-Length") != "0"):
            self._send(_CONTINUE)
        self._ready = True
        self._feed_delegate()
        if len(self._queue) <= MAX_QUEUED and not self._lingering:
            self._resume_reading()

    def _feed_delegate(self) -> None:
        request = self._queue[0]
        while request.chunks and self._ready and self._delegate is not None:
            self._deliver(request.chunks.popleft())
        if not request.chunks and self._ready and len(self._queue) <= MAX_QUEUED and not self._stop_parsing:
            self._resume_reading()
        if request.complete and not request.chunks and self._ready and self._delegate is not None \
                and not self._read_finished:
            self._read_finished = True
            if not self._write_finished:
                self._delegate.finish()
            else:
                self._request_done()

    def _deliver(self, chunk: bytes) -> None:
        if self._write_finished:
            return  # answered already: the rest of the body is dropped
        request = self._queue[0]
        if request.body_size > self._max_body_size:
            self._malformed("body too large")
            return
        waiting = self._delegate.data_received(chunk)  # type: ignore[union-attr]
        if waiting is not None:
            self._ready = False
            self._pause_reading()

            async def resume() -> None:
                await waiting
                self._ready = True
                self._feed_delegate()
                self._resume_reading()

            self._loop.create_task(resume())

    def _request_done(self) -> None:
        """The head request is read and answered: on to the next, or close."""
        self._queue.popleft()
        self._delegate = None
        self._close_callback = None
        if self._disconnect_on_finish or self._stop_parsing:
            self._stop_parsing = True
            self._queue.clear()
            self._close_after_flush = True
            self._maybe_close()
            return
        if self._queue:
            if self._queue[0].start_line is not None:
                self._start()
        else:
            self.server.deadlines[self] = self._loop.time() + self.server.idle_timeout
            self._resume_reading()

    # -- HTTPConnection --------------------------------------------------------

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        """``callback()`` runs if the connection closes before the answer is finished."""
        self._close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        """The body limit of the current request (a larger one is refused with 400)."""
        self._max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        """The server's ``body_timeout`` applies; kept for the interface."""

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> Any:
        """Start the answer (Tornado's rules for framing and keep-alive)."""
        request = self._queue[0] if self._queue else None
        if request is None or self._closed:
            return self._closed_future()
        req_line = request.start_line
        req_headers = request.headers
        assert req_line is not None and req_headers is not None
        code = start_line.code
        self._response_started = True
        self._chunking_output = (
            req_line.version == "HTTP/1.1"
            and req_line.method != "HEAD"
            and code not in (204, 304)
            and not 100 <= code < 200
            and "Content-Length" not in headers
            and "Transfer-Encoding" not in headers
        )
        if (req_line.version != "HTTP/1.1" and not self._chunking_output and "Content-Length" not in headers
                and code not in (204, 304) and req_line.method != "HEAD"):
            # A body that only the end of the connection delimits.
            self._disconnect_on_finish = True
        if not self._read_finished and not request.complete and not 100 <= code < 200:
            # Answered before the request's body is in (a 413, say): the
            # connection closes after this answer (see finish), and the
            # client is told so rather than finding out on its next request.
            self._disconnect_on_finish = True
        if req_line.version == "HTTP/1.1" and self._disconnect_on_finish:
            headers["Connection"] = "close"
        if req_line.version == "HTTP/1.0" and not self._disconnect_on_finish:
            headers["Connection"] = "Keep-Alive"
        if self._chunking_output:
            headers["Transfer-Encoding"] = "chunked"
        if req_line.method == "HEAD" or code == 304:
            self._expected_remaining = 0
        elif "Content-Length" in headers:
            self._expected_remaining = int(headers["Content-Length"])
        else:
            self._expected_remaining = None
        lines = ["HTTP/1.1 %d %s" % (code, start_line.reason or REASONS.get(code, "Unknown"))]
        lines.extend("%s: %s" % pair for pair in headers.get_all())
        head = "\r\n".join(lines)
        if "\n" in head.replace("\r\n", "") or "\r" in head.replace("\r\n", ""):
            raise ValueError("Illegal characters (CR or LF) in header")
        data = head.encode("latin1") + b"\r\n\r\n"
        if chunk:
            data += self._frame(chunk)
        return self._write(data)

    def write(self, chunk: bytes) -> Any:
        """More of the answer's body."""
        if self._closed:
            return self._closed_future()
        return self._write(self._frame(chunk))

    def _frame(self, chunk: bytes) -> bytes:
        if self._expected_remaining is not None:
            self._expected_remaining -= len(chunk)
            if self._expected_remaining < 0:
                self.close()
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if self._chunking_output and chunk:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk)
        return chunk

    def finish(self) -> None:
        """The answer is complete."""
        if self._expected_remaining and not self._closed:
            self.close()
            raise httputil.HTTPOutputError("Tried to write %d bytes less than Content-Length" % self._expected_remaining)
        if self._chunking_output and not self._closed:
            self._send(b"0\r\n\r\n")
        self._write_finished = True
        self._close_callback = None
        if not self._read_finished and self._queue and self._queue[0].complete:
            # Answered before the delegate had the whole body, but all of
            # it is here: drop it, and the connection stays in step.
            self._queue[0].chunks.clear()
            self._read_finished = True
        if not self._read_finished:
            # Answered before the body was read: this connection's input
            # is no longer in step, so it closes once the answer is out.
            self._queue.clear()
            self._delegate = None
            self._linger()
            return
        if self._delegate is not None:
            self._request_done()

    def detach(self) -> socket.socket:
        """Hand the socket over (an event stream's writer takes it); :returns: the socket.

        The connection forgets it without closing it.  Whatever the client
        sent after its request is still in the returned socket's care: a
        pipelined request after a stream is refused by closing.
        """
        sock = self._sock
        assert sock is not None
        extra = len(self._queue) > 1 or self._parsing is not None or self._out_size > 0
        if extra:
            self._pause_reading()
        # Otherwise the socket stays registered for reading: the new owner's
        # loop.add_reader replaces this connection's callback in place (no
        # epoll change), which it must do right away.
        self._reading = False
        self._sock = None
        self._closed = True
        self._delegate = None
        self._close_callback = None
        self._parser = None
        self._queue.clear()
        self.server.forget(self)
        if extra:
            sock.close()
        return sock

    # -- output -----------------------------------------------------------------

    def _write(self, data: bytes) -> Any:
        self._send(data)
        if self._closed:
            return self._closed_future()
        future = self._loop.create_future()
        if not self._out:
            # All of it is with the kernel already (the usual case).
            future.set_result(None)
        else:
            self._drain_waiters.append(future)
        return future

    def _closed_future(self) -> Any:
        future = self._loop.create_future()
        future.set_exception(StreamClosedError())
        future.exception()  # nobody may look: do not log it as unretrieved
        return future

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None or not data:
            return
        if self._out:
            self._out.append(memoryview(data))
            self._out_size += len(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self._out.append(memoryview(data)[sent:])
            self._out_size += len(data) - sent
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            self._out_size -= send_queued(sock, self._out)
        except OSError:
            self.close()
            return
        if self._out:
            return
        self._writing = False
        self._loop.remove_writer(self._fd)
        waiters, self._drain_waiters = self._drain_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._close_after_flush and not self._out:
            self.close()

    def _linger(self) -> None:
        """Close without losing the answer while the client is still sending.

        Closing a socket with unread input makes the kernel reset the
        connection, and a client busy sending its body then sees "connection
        reset" instead of the answer.  So, as web servers do: once the
        answer is out, send FIN, read and discard what still comes for a
        bounded time and amount, then close.
        """
        self._lingering = True
        self._stop_parsing = True
        self._linger_left = LINGER_BYTES
        self.server.deadlines[self] = self._loop.time() + LINGER_SECONDS
        self._resume_reading()
        if self._out:
            self._close_after_flush = False

            def after() -> None:
                self._shutdown_write()

            self._drain_then(after)
        else:
            self._shutdown_write()

    def _drain_then(self, callback: Callable[[], None]) -> None:
        future = self._loop.create_future()
        self._drain_waiters.append(future)
        future.add_done_callback(lambda _: callback())

    def _shutdown_write(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close()

    def close(self) -> None:
        """Close the connection (idempotent); an unfinished request is told."""
        if self._closed:
            return
        self._closed = True
        # A close from inside a parser callback: the rest of this read is
        # not for anyone.
        self._stop_parsing = True
        sock = self._sock
        self._sock = None
        if sock is not None:
            if self._reading:
                self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
            sock.close()
        self._reading = self._writing = False
        self._out.clear()
        self._out_size = 0
        waiters, self._drain_waiters = self._drain_waiters, []
        for future in waiters:
            if not future.done():
                future.set_exception(StreamClosedError())
                future.exception()
        callback, self._close_callback = self._close_callback, None
        delegate, self._delegate = self._delegate, None
        self._parser = None
        self._queue.clear()
        self.server.forget(self)
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("connection close callback failed")
        if delegate is not None and not self._read_finished:
            try:
                delegate.on_connection_close()
            except Exception:
                log.exception("request delegate failed on close")


def _can_keep_alive(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> bool:
    """Tornado's rule: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only when asked."""
    connection = headers.get("Connection", "").lower()
    if start_line.version == "HTTP/1.1":
        return connection != "close"
    return connection == "keep-alive"


class HTTP1Server:
    """Accepts connections and serves them with :class:`Connection`.

    :param delegate: the application (``start_request(server_conn, request_conn)``).
    :param max_header_size: a header block larger than this closes the connection.
    :param max_body_size: a body larger than this is refused (400), unless
        the handler lifts the limit for its request.
    :param idle_timeout: seconds to wait for a request and its headers.
    :param body_timeout: seconds to receive a request's body.
    """

    def __init__(self, delegate: Any, max_header_size: int = 64 * 1024, max_body_size: int = 100 * 1024 * 1024,
                 idle_timeout: float = 75.0, body_timeout: float = 30.0) -> None:
        self.delegate = delegate
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.loop = IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        self.buffer = bytearray(READ_SIZE)
        #: connection -> the loop time it must have made progress by.
        self.deadlines: dict[Connection, float] = {}
        self.connections: set[Connection] = set()
        self._listeners: dict[int, tuple[socket.socket, Callable[[], None]]] = {}
        period = max(0.05, min(1.0, idle_timeout / 4, body_timeout / 4))
        self._sweeper = PeriodicCallback(self._sweep, period * 1000)
        self._sweeper.start()

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        """Start accepting on listening sockets bound already."""
        for sock in sockets:
            remove = netutil.add_accept_handler(sock, self._accepted)
            self._listeners[sock.fileno()] = (sock, remove)

    def _accepted(self, sock: socket.socket, address: Any) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        conn = Connection(self, sock, address)
        self.connections.add(conn)
        self.deadlines[conn] = self.loop.time() + self.idle_timeout

    def forget(self, conn: Connection) -> None:
        """A connection closed or was detached."""
        self.connections.discard(conn)
        self.deadlines.pop(conn, None)
        on_close = getattr(self.delegate, "on_close", None)
        if on_close is not None:
            on_close(conn)

    def _sweep(self) -> None:
        now = self.loop.time()
        late = [conn for conn, deadline in self.deadlines.items() if deadline <= now]
        for conn in late:
            self.deadlines.pop(conn, None)
            conn.close()

    def stop(self) -> None:
        """Stop accepting (open connections stay) and stop the sweep."""
        self._sweeper.stop()
        for sock, remove in self._listeners.values():
            remove()
            sock.close()
        self._listeners.clear()

    async def close_all_connections(self) -> None:
        """Close every open connection (event streams already detached are not here)."""
        for conn in list(self.connections):
            conn.close()

