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

Every request this layer refuses gets an answer and one log line: framing
that cannot be parsed, the heads Tornado's request builder refuses (no
``Host`` on HTTP/1.1, two of them, an invalid one, too many query fields),
and what llhttp parses but Tornado's server refuses (an HTTP/0.9 or
HTTP/2.0 request line, a ``Transfer-Encoding`` other than ``chunked``)
get a JSON 400 with ``Connection: close``; nothing a client sends produces
a traceback.  Each connection costs at most its share: requests on one
connection are served one at a time, in order; at most :data:`MAX_QUEUED`
pipelined requests are parsed ahead (the rest of the input waits unparsed),
and the next one starts only once earlier answers are (nearly) all with the
kernel, so a client that sends and never reads holds about one answer.
The idle and body deadlines are kept in one dict swept periodically (no
timer per request); what a client pipelines behind a request being served
gets its deadline once that request is answered, as on Tornado's server.
``tests/test_http_differential.py`` compares this layer with Tornado's
``HTTPServer`` on the same raw requests.

The server side (:class:`HTTP1Server`) keeps the process alive under
connection floods: past ``max_connections`` open connections (event
streams included) a new connection gets a quick 503 and is closed, which
leaves descriptors for the database, Redis and health checks; and when the
process runs out of descriptors anyway, accepting pauses for a second (as
asyncio's own server and nginx do) with one log line, instead of retrying
at once in a loop.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import re
import resource
import socket
from collections.abc import Callable
from typing import Any

import httptools
from tornado import httputil
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import StreamClosedError
from tornado.platform.asyncio import BaseAsyncIOLoop

from core.transport.output import Output, closed_future

log = logging.getLogger("notify.http1")
#: Refused requests are answered and logged here, one line each, like the
#: access log's other 4xx lines.
access_log = logging.getLogger("notify.access")

#: Bytes read from a socket at once (into one buffer shared by every connection).
READ_SIZE = 64 * 1024
#: Input is given to the parser in slices of at most this size, so that
#: parsing can stop between two slices once enough requests wait.
FEED_SLICE = 4 * 1024
#: Pipelined requests parsed ahead of the one being served, at most, before
#: reading and parsing pause.
MAX_QUEUED = 16
#: Body bytes held for a request whose handler is not taking them yet, at
#: most, before reading pauses.
HIGH_WATER = 64 * 1024
#: Unsent answer bytes above which the next pipelined request waits for
#: the client to read.
OUT_HIGH_WATER = 64 * 1024
#: A connection closed with its request body unread is drained this long and
#: this much first (see :meth:`Connection._linger`).
LINGER_SECONDS = 5.0
LINGER_BYTES = 64 * 1024 * 1024
#: Seconds accepting pauses when the process has no descriptor left.
ACCEPT_RETRY_DELAY = 1.0
#: Connections accepted in one pass, at most (Tornado's figure): others
#: waiting get their turn after the loop's other work.
ACCEPT_BATCH = 128
#: Descriptors kept free below the process's limit by the default
#: ``max_connections``: database and Redis connections, listening sockets,
#: logs, and refusals in progress.  At least this many, or a twentieth.
DESCRIPTOR_RESERVE = 64
#: Connections being refused (answer sent, input drained briefly), at most;
#: more are closed at once.
MAX_REFUSING = 256
#: Seconds a refused connection is drained before it is closed.
REFUSE_LINGER = 1.0
#: Seconds between two log lines about the same overload.
OVERLOAD_LOG_EVERY = 60.0

#: Reason phrases by status code.
REASONS = {code: httputil.responses.get(code, "Unknown") for code in range(100, 600)}
_CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

#: A ``Host`` value as Tornado's request builder accepts it (RFC 3986's
#: host characters, brackets and colons anywhere, an optional port), minus
#: the comma, which is what two ``Host`` headers become once joined.
_HOST = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+;=:\[\]-]|%[0-9A-Fa-f]{2})*\Z")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete JSON error answer that closes the connection (the contract's error body)."""
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Cache-Control: no-store\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n%s"
        % (status, REASONS[status].encode(), extra.encode("latin1"), len(body), body)
    )


def head_problem(version: str, headers: httputil.HTTPHeaders) -> str | None:
    """What makes a parsed request unfit to serve, by Tornado's rules, or None.

    llhttp also parses what Tornado refuses and nothing here would handle
    right: an HTTP/0.9 or HTTP/2.0 request line, and a ``Transfer-Encoding``
    other than plain ``chunked`` (``gzip, chunked``: a coding nobody here
    undoes); then the ``Host`` rules (:func:`host_problem`).
    """
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        return "unsupported HTTP version " + version[5:]
    coding = headers.get("Transfer-Encoding")
    if coding is not None and coding.lower() != "chunked":
        return "unsupported Transfer-Encoding"
    return host_problem(version, headers)


def host_problem(version: str, headers: httputil.HTTPHeaders) -> str | None:
    """What is wrong with a request's ``Host`` header, by Tornado's rules, or None.

    HTTP/1.1 requires exactly one valid ``Host`` (RFC 9112, section 3.2);
    HTTP/1.0 may go without.
    """
    host = headers.get("Host")
    if host is None:
        return None if version == "HTTP/1.0" else "missing Host header"
    if "," in host:
        return "more than one Host header"
    if not _HOST.match(host):
        return "invalid Host header"
    return None


def default_max_connections() -> int:
    """Open connections a process may serve by default: its descriptor limit minus a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    reserve = max(DESCRIPTOR_RESERVE, soft // 20)
    return max(1, soft - reserve)


class HTTPCounters:
    """What the connection layer counts, for shutdown, ``/metrics`` and tests.

    ``in_flight`` is exact: a request counts from its headers until its
    answer is finished, its stream is handed over, or its connection
    closes, whichever comes first, on every route and door alike.
    """

    def __init__(self) -> None:
        #: Requests being served now.
        self.in_flight = 0
        #: Requests refused by this layer (malformed, bad ``Host``, ...).
        self.requests_refused = 0
        #: Connections refused with a 503 past ``max_connections``.
        self.connections_refused = 0
        #: Times accepting paused because the process had no descriptor left.
        self.accept_pauses = 0
        #: Times a pipelined request waited for its client to read the
        #: answers before it.
        self.pipeline_waits = 0


class Headers(httputil.HTTPHeaders):
    """A request's headers, as llhttp parsed them (and checked them against the grammar).

    Filled through ``HTTPHeaders``' public item assignment, which skips the
    grammar check of ``add()`` that llhttp has done already (``add()`` only
    for a repeated name).  Its ``get`` of an absent name does not raise
    and catch ``KeyError`` (the ``Mapping`` default): a request looks up
    many headers it does not have (``Origin``, ``Cookie``, ...).
    """

    def get(self, name: str, default: Any = None) -> Any:
        """The combined value of ``name``, or ``default`` when absent (no exception raised)."""
        values = self.get_list(name)
        if not values:
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

    __slots__ = ("start_line", "headers", "keep_alive", "chunks", "buffered", "complete", "body_size")

    def __init__(self) -> None:
        self.start_line: httputil.RequestStartLine | None = None
        self.headers: httputil.HTTPHeaders | None = None
        #: llhttp's reading of ``Connection`` and the version: HTTP/1.1
        #: unless a ``close`` option is listed, HTTP/1.0 only with ``keep-alive``.
        self.keep_alive = False
        self.chunks: collections.deque[bytes] = collections.deque()
        #: Bytes in ``chunks`` (kept, not summed: a body of many tiny
        #: chunks would otherwise cost quadratic time).
        self.buffered = 0
        self.complete = False
        self.body_size = 0


class Exchange(httputil.HTTPConnection):
    """One request and its answer: the ``HTTPConnection`` the application writes to.

    Made by its :class:`Connection` for each request it serves and dropped
    when that request is done (as uvicorn's ``RequestResponseCycle``), so
    nothing about one request is left to reset before the next.  Once
    done, it answers every write with a closed stream.
    """

    __slots__ = (
        "connection",
        "request",
        "context",
        "delegate",
        "ready",
        "read_finished",
        "write_finished",
        "response_started",
        "chunked_output",
        "expected_remaining",
        "disconnect_on_finish",
        "max_body_size",
        "close_callback",
    )

    def __init__(self, connection: Connection, request: _Request) -> None:
        self.connection = connection
        self.request = request
        #: What ``HTTPServerRequest`` reads (the client's address).
        self.context = connection.context
        self.delegate: httputil.HTTPMessageDelegate | None = None
        #: The delegate takes body chunks.
        self.ready = False
        self.read_finished = False
        self.write_finished = False
        self.response_started = False
        #: Whether the answer is chunk-framed (what a stream's writer must keep doing).
        self.chunked_output = False
        self.expected_remaining: int | None = None
        self.disconnect_on_finish = not request.keep_alive
        self.max_body_size = connection.server.max_body_size
        self.close_callback: Callable[[], None] | None = None

    @property
    def live(self) -> bool:
        """Whether this is still the request its connection serves."""
        return self.connection.exchange is self

    # -- HTTPConnection ----------------------------------------------------------

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        """``callback()`` runs if the connection closes before the answer is finished."""
        self.close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        """The body limit of this request (a larger one is refused with 400)."""
        self.max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        """The server's ``body_timeout`` applies; kept for the interface."""

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> Any:
        """Start the answer (Tornado's rules for framing and keep-alive)."""
        connection = self.connection
        if not self.live or connection.closed:
            return closed_future(connection.loop)
        request = self.request
        req_line = request.start_line
        assert req_line is not None
        code = start_line.code
        self.response_started = True
        self.chunked_output = (
            req_line.version == "HTTP/1.1"
            and req_line.method != "HEAD"
            and code not in (204, 304)
            and not 100 <= code < 200
            and "Content-Length" not in headers
            and "Transfer-Encoding" not in headers
        )
        if (
            req_line.version != "HTTP/1.1"
            and not self.chunked_output
            and "Content-Length" not in headers
            and code not in (204, 304)
            and req_line.method != "HEAD"
        ):
            # A body that only the end of the connection delimits.
            self.disconnect_on_finish = True
        if not self.read_finished and not request.complete and not 100 <= code < 200:
            # Answered before the request's body is in (a 413, say): the
            # connection closes after this answer (see finish), and the
            # client is told so rather than finding out on its next request.
            self.disconnect_on_finish = True
        if req_line.version == "HTTP/1.1" and self.disconnect_on_finish:
            headers["Connection"] = "close"
        if req_line.version == "HTTP/1.0" and not self.disconnect_on_finish:
            headers["Connection"] = "Keep-Alive"
        if self.chunked_output:
            headers["Transfer-Encoding"] = "chunked"
        if req_line.method == "HEAD" or code == 304:
            self.expected_remaining = 0
        elif "Content-Length" in headers:
            self.expected_remaining = int(headers["Content-Length"])
        else:
            self.expected_remaining = None
        lines = ["HTTP/1.1 %d %s" % (code, start_line.reason or REASONS.get(code, "Unknown"))]
        lines.extend("%s: %s" % pair for pair in headers.get_all())
        head = "\r\n".join(lines)
        if "\n" in head.replace("\r\n", "") or "\r" in head.replace("\r\n", ""):
            raise ValueError("Illegal characters (CR or LF) in header")
        data = head.encode("latin1") + b"\r\n\r\n"
        if chunk:
            data += self._frame(chunk)
        return connection.write(data)

    def write(self, chunk: bytes) -> Any:
        """More of the answer's body."""
        if not self.live or self.connection.closed:
            return closed_future(self.connection.loop)
        return self.connection.write(self._frame(chunk))

    def _frame(self, chunk: bytes) -> bytes:
        if self.expected_remaining is not None:
            self.expected_remaining -= len(chunk)
            if self.expected_remaining < 0:
                self.connection.close()
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if self.chunked_output and chunk:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk)
        return chunk

    def finish(self) -> None:
        """The answer is complete."""
        connection = self.connection
        if not self.live:
            return
        if self.expected_remaining and not connection.closed:
            connection.close()
            raise httputil.HTTPOutputError("Tried to write %d bytes less than Content-Length" % self.expected_remaining)
        if self.chunked_output and not connection.closed:
            connection.send(b"0\r\n\r\n")
        self.write_finished = True
        self.close_callback = None
        request = self.request
        if not self.read_finished and request.complete:
            # Answered before the delegate had the whole body, but all of
            # it is here: drop it, and the connection stays in step.
            request.chunks.clear()
            request.buffered = 0
            self.read_finished = True
        if self.read_finished:
            connection.request_done()
        else:
            # Answered before the body was read: this connection's input
            # is no longer in step, so it closes once the answer is out.
            connection.abandon_input()

    def detach(self) -> socket.socket:
        """Hand the socket over (an event stream's writer takes it); :returns: the socket.

        The connection forgets it without closing it, and the request stops
        counting as in flight.  Whatever the client sent after its request
        is still in the returned socket's care: a pipelined request after a
        stream is refused by closing.
        """
        return self.connection.detach()


class Connection:
    """One client connection: parses requests, serves them in order, writes answers.

    Created by :class:`HTTP1Server` for each accepted socket; each request
    is served through its own :class:`Exchange`.
    """

    def __init__(self, server: HTTP1Server, sock: socket.socket, address: Any) -> None:
        self.server = server
        self.context = _Context(sock.family, address)
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self.loop = server.loop
        self._parser: Any = httptools.HttpRequestParser(self)
        #: Requests parsed and waiting, the one being served first.
        self._queue: collections.deque[_Request] = collections.deque()
        self._parsing: _Request | None = None
        self._url: list[bytes] = []
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_size = 0
        self._in_head = False
        self._stop_parsing = False
        #: ``(status, code, message)`` for input refused after the requests
        #: being served: answered once they are done.
        self._refusal: tuple[int, str, str] | None = None
        #: Input read but not parsed yet (parsing paused: enough requests wait).
        self._unparsed: bytes = b""
        #: The request being served (the queue's head), counted in flight.
        self.exchange: Exchange | None = None
        #: What the kernel has not taken yet (core.transport.output).
        self._output = Output(sock, self.loop, self)
        self._start_on_drain = False
        self._close_after_flush = False
        self._lingering = False
        self._linger_left = 0
        self._reading = False
        self.closed = False
        self._resume_reading()

    # -- reading ---------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed and self._sock is not None and not self._unparsed:
            self._reading = True
            self.loop.add_reader(self._fd, self._on_readable)

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self._fd)

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
            self._feed(data)
        finally:
            data.release()
        if self.closed or self._stop_parsing:
            return
        if self._in_head:
            # Counted by reads: at most one read more than the header block.
            self._head_bytes += n
            if self._head_bytes > self.server.max_header_size:
                # A header block too large to hold: nothing more is read.
                self._reject(431, "headers_too_large", "the request line and headers are too large")
                return
        if len(self._queue) > MAX_QUEUED:
            self._pause_reading()

    def _feed(self, data: memoryview) -> None:
        """Parse ``data``; past :data:`MAX_QUEUED` waiting requests, keep the rest unparsed."""
        size = len(data)
        offset = 0
        while offset < size:
            piece = data[offset : offset + FEED_SLICE] if size - offset > FEED_SLICE else data[offset:]
            offset += len(piece)
            if not self._parse(piece):
                return
            if len(self._queue) > MAX_QUEUED and offset < size:
                # Enough requests wait: what follows is parsed when they
                # are served (bounded by one read).
                self._unparsed = bytes(data[offset:])
                self._pause_reading()
                return

    def _parse(self, data: memoryview) -> bool:
        """Give ``data`` to the parser; :returns: whether parsing may go on."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are not served here: answer the request as a plain
            # one, then close (nothing after it is read).
            if self._parsing is not None and self._parsing.headers is not None:
                self.on_message_complete()
            self._stop_parsing = True
            self._pause_reading()
            if not self._queue:
                self._close_after_flush = True
                self._maybe_close()
            return False
        except httptools.HttpParserCallbackError:
            # Every callback handles its own errors: this is a bug.
            log.exception("parsing a request failed; closing its connection")
            self.close()
            return False
        except httptools.HttpParserError as exc:
            self._reject(
                400, "bad_request", "the request could not be parsed: " + (str(exc) or "malformed").rstrip(".")
            )
            return False
        return not (self.closed or self._stop_parsing)

    def _feed_unparsed(self) -> None:
        """Parse the input held back while requests waited, then read again."""
        if self.closed or self._stop_parsing or not self._unparsed or len(self._queue) > MAX_QUEUED:
            return
        data, self._unparsed = self._unparsed, b""
        view = memoryview(data)
        try:
            self._feed(view)
        finally:
            view.release()
        if not self._unparsed and len(self._queue) <= MAX_QUEUED:
            self._resume_reading()

    def _reject(self, status: int, code: str, message: str) -> None:
        """Refuse the input being parsed: nothing after it is read.

        When it comes after the request being served (pipelined), that
        request, and those queued whole after it, are served first; then
        the bad input is answered, and the connection closes.
        """
        head = self._queue[0] if self._queue else None
        exchange = self.exchange
        if head is not None and (head.complete or (exchange is not None and exchange.response_started)):
            self._stop_parsing = True
            self._unparsed = b""
            self._pause_reading()
            if len(self._queue) > 1 and not self._queue[-1].complete:
                self._queue.pop()
            self._refusal = (status, code, message)
            return
        self._refuse(head, message, status, code)

    def _refuse(self, request: _Request | None, message: str, status: int = 400, code: str = "bad_request") -> None:
        """Answer the head request (or unparsable input) with a JSON error, then close.

        One log line, never a traceback: a refused request is the client's
        error, not the server's.  The connection closes after a lingering
        drain (:meth:`_linger`), so a client still sending gets the answer
        rather than a reset.
        """
        self._refusal = None
        self._queue.clear()
        self._abandon()
        self.server.counters.requests_refused += 1
        start_line = request.start_line if request is not None else None
        method = start_line.method if start_line is not None else "-"
        path = start_line.path.split("?", 1)[0] if start_line is not None else "-"
        access_log.warning("%d %s %s from %s: %s", status, method, _printable(path), self.context.remote_ip, message)
        answer = error_response(status, code, message)
        if method == "HEAD" or (
            start_line is None and self._parser is not None and self._parser.get_method() == b"HEAD"
        ):
            # No body to a HEAD (RFC 9110, 9.3.2), not even an error's: a
            # client would read it as the next answer.  No Content-Length
            # either: when the request could not be parsed, HEAD is
            # llhttp's guess, and a client that sent something else then
            # reads an empty body ended by the close.
            answer = answer[: answer.index(b"Content-Length: ")] + b"\r\n"
        self.send(answer)
        self._linger()

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
            self.server.deadlines[self] = self.loop.time() + self.server.idle_timeout

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
            # A header block too large to hold: nothing more is read.
            self._reject(431, "headers_too_large", "the request line and headers are too large")
            return
        parser = self._parser
        version = "HTTP/" + parser.get_http_version()
        method = parser.get_method().decode("latin1")
        uri = b"".join(self._url).decode("latin1")
        headers = Headers()
        seen: set[bytes] = set()
        try:
            for name, value in self._fields:
                text = value.decode("latin1").strip()
                lower = name.lower()
                if lower in seen:
                    headers.add(name.decode("latin1"), text)
                else:
                    seen.add(lower)
                    headers[name.decode("latin1")] = text
        except httputil.HTTPInputError as exc:
            # A repeated header Tornado's grammar refuses.
            self._reject(400, "bad_request", _printable(str(exc)))
            return
        request.start_line = httputil.RequestStartLine(method, uri, version)
        request.headers = headers
        request.keep_alive = parser.should_keep_alive()
        self._url = []
        self._fields = []
        self.server.deadlines[self] = self.loop.time() + self.server.body_timeout
        self._queue.append(request)
        if len(self._queue) == 1:
            self._next()

    def on_body(self, body: bytes) -> None:
        """A piece of the body."""
        request = self._parsing
        if request is None or self._stop_parsing:
            return
        request.body_size += len(body)
        exchange = self.exchange
        if exchange is not None and request is exchange.request and exchange.ready and not request.chunks:
            self._deliver(exchange, body)
        else:
            request.chunks.append(body)
            request.buffered += len(body)
            if request.buffered > HIGH_WATER:
                self._pause_reading()

    def on_message_complete(self) -> None:
        """The request is read."""
        request = self._parsing
        if request is None or request.complete or self._stop_parsing:
            return
        request.complete = True
        self._parsing = None
        self.server.deadlines.pop(self, None)
        exchange = self.exchange
        if exchange is not None and request is exchange.request and exchange.ready:
            self._feed_delegate(exchange)

    # -- serving -----------------------------------------------------------------

    def _next(self) -> None:
        """Serve the queue's head, once earlier answers have (nearly) all left."""
        if self.exchange is not None or self.closed or not self._queue or self._queue[0].start_line is None:
            return
        if self._output.pending > OUT_HIGH_WATER:
            # The client is not reading its answers: it gets the next one
            # when it has taken these.
            self._pause_reading()
            self._start_on_drain = True
            self.server.counters.pipeline_waits += 1
            return
        self._start()

    def _start(self) -> None:
        """Serve the queue's head through a new :class:`Exchange`."""
        request = self._queue[0]
        start_line, headers = request.start_line, request.headers
        assert start_line is not None and headers is not None
        problem = head_problem(start_line.version, headers)
        if problem is not None:
            self._refuse(request, problem)
            return
        exchange = self.exchange = Exchange(self, request)
        self.server.counters.in_flight += 1
        try:
            exchange.delegate = self.server.delegate.start_request(self, exchange)
            waiting = exchange.delegate.headers_received(start_line, headers)
        except httputil.HTTPInputError as exc:
            # Tornado's request builder refuses it (too many query
            # fields, ...): the client's error, answered as such.  The
            # delegate never started: nothing to tell it.
            exchange.delegate = None
            self._refuse(request, _printable(str(exc)))
            return
        except Exception:
            log.exception("starting a request failed")
            exchange.delegate = None
            self._fail()
            return
        if not exchange.live:
            return  # answered, detached or closed meanwhile
        if waiting is not None:
            # Reading goes on meanwhile (pausing and resuming would cost
            # two epoll changes per request): body bytes wait in the
            # request, up to HIGH_WATER (see on_body).
            self.loop.create_task(self._after(exchange, waiting))
        else:
            self._headers_taken(exchange)

    def _fail(self) -> None:
        """A bug while serving the head request: a JSON 500, then close."""
        exchange = self.exchange
        started = exchange is not None and exchange.response_started
        self._stop_parsing = True
        self._unparsed = b""
        self._queue.clear()
        self._abandon()
        if not started:
            self.send(error_response(500, "internal_error", "the server failed to handle this request"))
        self._linger()

    async def _after(self, exchange: Exchange, waiting: Any) -> None:
        try:
            await waiting
        except Exception:
            log.exception("request delegate failed")
        self._headers_taken(exchange)

    def _headers_taken(self, exchange: Exchange) -> None:
        """The delegate has the headers (and prepared): the body may flow."""
        if not exchange.live or exchange.delegate is None or self.closed:
            return
        request = exchange.request
        headers = request.headers
        assert headers is not None
        length = headers.get("Content-Length")
        if (
            length is not None
            and length.isdigit()
            and int(length) > exchange.max_body_size
            and not exchange.write_finished
        ):
            self._reject(400, "bad_request", "the request could not be parsed: Content-Length too long")
            return
        if (
            headers.get("Expect", "").lower() == "100-continue"
            and not exchange.write_finished
            and not request.complete
            and headers.get("Content-Length") != "0"
        ):
            self.send(_CONTINUE)
        exchange.ready = True
        self._feed_delegate(exchange)
        if len(self._queue) <= MAX_QUEUED and not self._lingering:
            self._resume_reading()

    def _feed_delegate(self, exchange: Exchange) -> None:
        request = exchange.request
        while request.chunks and exchange.ready and exchange.live:
            chunk = request.chunks.popleft()
            request.buffered -= len(chunk)
            self._deliver(exchange, chunk)
        if not exchange.live:
            return
        if not request.chunks and exchange.ready and len(self._queue) <= MAX_QUEUED and not self._stop_parsing:
            self._resume_reading()
        if request.complete and not request.chunks and exchange.ready and not exchange.read_finished:
            exchange.read_finished = True
            if not exchange.write_finished:
                assert exchange.delegate is not None
                exchange.delegate.finish()
            else:
                self.request_done()

    def _deliver(self, exchange: Exchange, chunk: bytes) -> None:
        if exchange.write_finished:
            return  # answered already: the rest of the body is dropped
        if exchange.request.body_size > exchange.max_body_size:
            self._reject(400, "bad_request", "the request could not be parsed: body too large")
            return
        assert exchange.delegate is not None
        waiting = exchange.delegate.data_received(chunk)
        if waiting is not None:
            exchange.ready = False
            self._pause_reading()

            async def resume() -> None:
                await waiting
                exchange.ready = True
                self._feed_delegate(exchange)
                self._resume_reading()

            self.loop.create_task(resume())

    def request_done(self) -> None:
        """The request being served is read and answered: on to the next, or close."""
        exchange = self.exchange
        assert exchange is not None
        self._queue.popleft()
        self._end_exchange()
        if exchange.disconnect_on_finish:
            self._stop_parsing = True
            self._unparsed = b""
            self._refusal = None
            self._queue.clear()
        if self._stop_parsing and not self._queue:
            if self._refusal is not None:
                status, code, message = self._refusal
                self._refuse(None, message, status, code)
                return
            self._close_after_flush = True
            self._maybe_close()
            return
        if self._unparsed and len(self._queue) <= MAX_QUEUED:
            # Not from here: this may run inside a parser callback.
            self.loop.call_soon(self._feed_unparsed)
        if self._queue:
            if not self._queue[0].complete:
                # Its body deadline waited while the request before it was served.
                self.server.deadlines[self] = self.loop.time() + self.server.body_timeout
            self._next()
        else:
            self.server.deadlines[self] = self.loop.time() + self.server.idle_timeout
            self._resume_reading()

    def abandon_input(self) -> None:
        """The request was answered before its body was read: the rest of the input is not in step.

        The connection closes once the answer is out (after a lingering drain).
        """
        self._queue.clear()
        self._end_exchange()
        self._linger()

    def _abandon(self) -> None:
        """Stop serving the head request; its handler is told, as when a client leaves."""
        exchange = self.exchange
        if exchange is None:
            return
        callback, delegate = exchange.close_callback, exchange.delegate
        self._end_exchange()
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("connection close callback failed")
        if delegate is not None and not exchange.read_finished:
            try:
                delegate.on_connection_close()
            except Exception:
                log.exception("request delegate failed on close")

    def _end_exchange(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            self.server.counters.in_flight -= 1
            # The delegate refers back to the exchange (its request_conn):
            # break the cycle, so that reference counting frees both now
            # rather than the garbage collector later (the server freezes
            # what lives through a collection; see server.tune_gc).
            exchange.delegate = None
            exchange.close_callback = None

    def serving_whole_request(self) -> bool:
        """Whether a request read whole is being served: what came after it waits, deadline included.

        As on Tornado's server, which reads a request only once the one
        before it is answered: a slow answer is not the client's delay, and
        a pipelined request (or a malformed one, refused after) must not end
        the connection before it.
        """
        return self.exchange is not None and self.exchange.request.complete

    def detach(self) -> socket.socket:
        """Hand the socket over (see :meth:`Exchange.detach`); :returns: the socket."""
        sock = self._sock
        assert sock is not None
        extra = (
            len(self._queue) > 1
            or self._parsing is not None
            or self._output.pending > 0
            or bool(self._unparsed)
            or self._refusal is not None
        )
        if extra:
            self._pause_reading()
        # Otherwise the socket stays registered for reading: the new owner's
        # loop.add_reader replaces this connection's callback in place (no
        # epoll change), which it must do right away.
        self._end_exchange()
        self._reading = False
        self._sock = None
        self.closed = True
        self._output.drop(StreamClosedError())
        self._parser = None
        self._queue.clear()
        self._unparsed = b""
        self.server.forget(self)
        if extra:
            sock.close()
        return sock

    # -- output -----------------------------------------------------------------

    def write(self, data: bytes) -> Any:
        """Send ``data``; :returns: a future resolved once the kernel has all of it."""
        self.send(data)
        if self.closed:
            return closed_future(self.loop)
        waiter = self._output.drained()
        if waiter is None:
            # All of it is with the kernel already (the usual case).
            waiter = self.loop.create_future()
            waiter.set_result(None)
        return waiter

    def send(self, data: bytes) -> None:
        """Send ``data`` (what the kernel does not take now is held and sent later)."""
        self._output.send(data)

    def output_failed(self, error: OSError) -> None:
        """A send failed: the client is gone."""
        self.close()

    def output_drained(self) -> None:
        """The client took every answer: a pipelined request may start, or the connection end."""
        if self._start_on_drain:
            self._start_on_drain = False
            self._next()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._close_after_flush and not self._output.pending:
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
        self._unparsed = b""
        self._close_after_flush = False
        self._linger_left = LINGER_BYTES
        self.server.deadlines[self] = self.loop.time() + LINGER_SECONDS
        self._resume_reading()
        waiter = self._output.drained()
        if waiter is None:
            self._shutdown_write()
        else:
            waiter.add_done_callback(lambda _: self._shutdown_write())

    def _shutdown_write(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close()

    def close(self) -> None:
        """Close the connection (idempotent); an unfinished request is told."""
        if self.closed:
            return
        self.closed = True
        # A close from inside a parser callback: the rest of this read is
        # not for anyone.
        self._stop_parsing = True
        self._unparsed = b""
        sock = self._sock
        self._sock = None
        self._output.drop(StreamClosedError())
        if sock is not None:
            if self._reading:
                self.loop.remove_reader(self._fd)
            sock.close()
        self._reading = False
        self._parser = None
        self._queue.clear()
        self.server.forget(self)
        self._abandon()


def _printable(text: str, limit: int = 120) -> str:
    """Client-supplied text fit for one log line: printable ASCII, bounded."""
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text[:limit])
    return clean + ("..." if len(text) > limit else "")


#: The answer past ``max_connections``: quick, and says when to retry.
_TOO_MANY_CONNECTIONS = error_response(
    503, "too_many_connections", "the server has no room for another connection; retry shortly", {"Retry-After": "1"}
)


class HTTP1Server:
    """Accepts connections and serves them with :class:`Connection`.

    :param delegate: the application (``start_request(server_conn, request_conn)``).
    :param max_header_size: a header block larger than this is answered 431 and ends the connection.
    :param max_body_size: a body larger than this is refused (400), unless
        the handler lifts the limit for its request.
    :param idle_timeout: seconds to wait for a request and its headers.
    :param body_timeout: seconds to receive a request's body.
    :param max_connections: open connections at most, counting
        ``open_elsewhere()``; a connection past it gets a 503 and is
        closed.  0 = :func:`default_max_connections`.
    :param open_elsewhere: connections this process still holds after
        they left this server (detached event streams).
    :param counters: where requests in flight and refusals are counted.
    """

    def __init__(
        self,
        delegate: Any,
        max_header_size: int = 64 * 1024,
        max_body_size: int = 100 * 1024 * 1024,
        idle_timeout: float = 75.0,
        body_timeout: float = 30.0,
        max_connections: int = 0,
        open_elsewhere: Callable[[], int] | None = None,
        counters: HTTPCounters | None = None,
    ) -> None:
        self.delegate = delegate
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections or default_max_connections()
        self._open_elsewhere = open_elsewhere or (lambda: 0)
        self.counters = counters if counters is not None else HTTPCounters()
        io_loop = IOLoop.current()
        assert isinstance(io_loop, BaseAsyncIOLoop)  # Tornado 6: every IOLoop runs on asyncio
        self.loop = io_loop.asyncio_loop
        self.buffer = bytearray(READ_SIZE)
        #: connection -> the loop time it must have made progress by.
        self.deadlines: dict[Connection, float] = {}
        self.connections: set[Connection] = set()
        self._listeners: dict[int, socket.socket] = {}
        self._accepting = False
        self._resume_timer: Any = None
        #: Refused sockets being drained -> the loop time they close at.
        self._refusing: dict[socket.socket, float] = {}
        self._logged: dict[str, float] = {}
        period = max(0.05, min(1.0, idle_timeout / 4, body_timeout / 4))
        self._sweeper = PeriodicCallback(self._sweep, period * 1000)
        self._sweeper.start()

    # -- accepting -------------------------------------------------------------

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        """Start accepting on listening sockets bound already."""
        for sock in sockets:
            sock.setblocking(False)
            self._listeners[sock.fileno()] = sock
        self._start_accepting()

    def _start_accepting(self) -> None:
        self._resume_timer = None
        if self._accepting or not self._listeners:
            return
        self._accepting = True
        for fd, sock in self._listeners.items():
            self.loop.add_reader(fd, self._on_acceptable, sock)

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for fd in self._listeners:
                self.loop.remove_reader(fd)

    def _on_acceptable(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self._accepting:
                return
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause_accepting(exc)
                else:
                    self._log_once("accept", "accepting a connection failed: %s", exc.strerror or exc)
                return
            self._accepted(sock, address)

    def _pause_accepting(self, exc: OSError) -> None:
        """No descriptor left: stop accepting for a moment instead of retrying at once.

        Connections wait in the listen backlog meanwhile; one line is
        logged per episode, not one per attempt.
        """
        self.counters.accept_pauses += 1
        self._stop_accepting()
        self._log_once(
            "descriptors",
            "out of descriptors (%s) with %d connections open: accepting paused for %.0f s",
            exc.strerror or exc,
            len(self.connections) + self._open_elsewhere(),
            ACCEPT_RETRY_DELAY,
        )
        self._resume_timer = self.loop.call_later(ACCEPT_RETRY_DELAY, self._start_accepting)

    def _accepted(self, sock: socket.socket, address: Any) -> None:
        if len(self.connections) + self._open_elsewhere() >= self.max_connections:
            self._refuse_connection(sock)
            return
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        conn = Connection(self, sock, address)
        self.connections.add(conn)
        self.deadlines[conn] = self.loop.time() + self.idle_timeout

    def _refuse_connection(self, sock: socket.socket) -> None:
        """Past ``max_connections``: a quick 503, then close.

        The answer goes out at once, without waiting for the request; what
        the client sends is then read and dropped for a moment, so that
        closing does not reset the connection before the client has read
        the answer.
        """
        self.counters.connections_refused += 1
        self._log_once(
            "full", "%d connections open (--max-connections): refusing new ones with 503", self.max_connections
        )
        sock.setblocking(False)
        try:
            sock.send(_TOO_MANY_CONNECTIONS)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self._refusing) >= MAX_REFUSING:
            sock.close()
            return
        self._refusing[sock] = self.loop.time() + REFUSE_LINGER
        self.loop.add_reader(sock.fileno(), self._drain_refused, sock)

    def _drain_refused(self, sock: socket.socket) -> None:
        try:
            if sock.recv(READ_SIZE):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close_refused(sock)

    def _close_refused(self, sock: socket.socket) -> None:
        if self._refusing.pop(sock, None) is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def _log_once(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message`` unless the same kind was logged within :data:`OVERLOAD_LOG_EVERY` seconds."""
        now = self.loop.time()
        if now - self._logged.get(kind, -OVERLOAD_LOG_EVERY) >= OVERLOAD_LOG_EVERY:
            self._logged[kind] = now
            log.warning(message, *args)

    # -- connections -------------------------------------------------------------

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
            if conn.serving_whole_request():
                continue  # answered first; the deadline is set anew after (_request_done)
            self.deadlines.pop(conn, None)
            conn.close()
        if self._refusing:
            for sock in [sock for sock, deadline in self._refusing.items() if deadline <= now]:
                self._close_refused(sock)

    def stop(self) -> None:
        """Stop accepting (open connections stay) and stop the sweep."""
        self._sweeper.stop()
        self._stop_accepting()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        for sock in self._listeners.values():
            sock.close()
        self._listeners.clear()
        for sock in list(self._refusing):
            self._close_refused(sock)

    async def close_all_connections(self) -> None:
        """Close every open connection (event streams already detached are not here)."""
        for conn in list(self.connections):
            conn.close()
