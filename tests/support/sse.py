"""Test-side Server-Sent Events tooling: a parser, a chunked decoder, a
raw-socket stream client and a small JSON request helper.

None of this imports the product (``core/streams/sse.py`` and friends) on purpose:
the tests need an oracle that reads the wire the way a browser does, not the
product's own encoder read backwards.  `SSEParser` follows the WHATWG HTML
"server-sent events" interpretation rules to the letter, and `SSEClient`
speaks HTTP/1.1 over a plain socket so that every byte the server sends
(framing, terminator, an abrupt close) is visible to the test.

Everything here runs on the current asyncio loop, which under Tornado 6 is
also the IOLoop, so it can talk to a Tornado server started in the same test.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from tornado.httputil import HTTPHeaders, HTTPInputError, parse_response_start_line

from tests.support import leaks

__all__ = [
    "ChunkedDecoder",
    "Event",
    "SSEClient",
    "SSEParser",
    "StreamEnded",
    "http_json",
]

# WHATWG: a line ends with CRLF, a lone LF or a lone CR.  The alternation
# order matters: CRLF must win over a lone CR.
_EOL = re.compile(r"\r\n|\r|\n")
_ASCII_DIGITS = re.compile(r"[0-9]+")
_HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_READ_SIZE = 65536

T = TypeVar("T")


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Event:
    """One dispatched event, as a browser's ``MessageEvent`` would carry it.

    :ivar type: the ``event:`` field of its block, or ``"message"``.
    :ivar data: the ``data:`` lines of its block joined with LF.
    :ivar last_event_id: the stream's last event ID when it was dispatched
        (it persists from earlier blocks; ``""`` if no ``id:`` was ever seen),
        i.e. what the browser exposes as ``event.lastEventId``.
    :ivar id: the ``id:`` field seen in this very block, or ``None``; lets a
        test tell "this event carries a cursor" from "an earlier one did".
    """

    type: str
    data: str
    last_event_id: str
    id: str | None = None

    def json(self) -> Any:
        """Return ``data`` parsed as JSON.

        :raises ValueError: if ``data`` is not valid JSON.
        """
        return json.loads(self.data)


class SSEParser:
    """Incremental parser for a ``text/event-stream`` body.

    Feed it decoded text in chunks of any size; it returns the events that
    each chunk completes.  It applies the WHATWG interpretation rules:

    * lines end with CRLF, LF or CR; a CR that ends one chunk and an LF that
      starts the next are one line ending;
    * one leading U+FEFF (BOM) of the stream is ignored;
    * a line starting with ``:`` is a comment (kept in `comments`);
    * otherwise the field name is everything before the first ``:`` (or the
      whole line) and one leading space of the value is dropped;
    * ``event`` sets the type, ``data`` appends a line, ``id`` sets the last
      event ID unless it contains NUL, ``retry`` sets `retry` if it is all
      ASCII digits; any other field is ignored;
    * a blank line dispatches: nothing if no ``data`` was seen (the type is
      reset all the same), else an `Event`.

    A block still open when the stream ends is never dispatched, as in a
    browser; simply stop feeding.

    :param on_comment: called with each comment's text as it is parsed (in
        addition to appending it to `comments`).

    :ivar comments: every comment so far, text after the colon with one
        leading space removed (``": ping"`` -> ``"ping"``).
    :ivar last_event_id: the stream's last event ID string, updated at each
        dispatch as the spec says (what a reconnect would send).
    :ivar retry: the last valid ``retry:`` value in milliseconds, or ``None``.
    """

    def __init__(self, on_comment: Callable[[str], None] | None = None) -> None:
        self.comments: list[str] = []
        self.last_event_id = ""
        self.retry: int | None = None
        self._on_comment = on_comment
        # The spec's data buffer is "values each followed by LF"; a list of
        # values is the same thing without the final LF to strip.
        self._data: list[str] = []
        self._event_type = ""
        self._id_buffer = ""
        self._block_id: str | None = None
        # Pieces of a line whose ending has not arrived yet.
        self._partial: list[str] = []
        self._seen_first_char = False
        self._after_cr = False

    def feed(self, text: str) -> list[Event]:
        """Parse the next piece of the stream.

        :param text: decoded text, split anywhere (even inside a CRLF).
        :returns: the events completed by this piece, in order.
        """
        if not isinstance(text, str):
            raise TypeError(f"feed() takes str, not {type(text).__name__}")
        if not text:
            return []
        if not self._seen_first_char:
            self._seen_first_char = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._after_cr:
            # The previous chunk ended with a CR that was already taken as
            # a line ending; an LF right after it belongs to that CRLF.
            self._after_cr = False
            if text.startswith("\n"):
                text = text[1:]
        events: list[Event] = []
        start = 0
        for match in _EOL.finditer(text):
            line = "".join(self._partial) + text[start : match.start()]
            self._partial.clear()
            start = match.end()
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        if start < len(text):
            self._partial.append(text[start:])
        # Ending a line at a trailing CR right away (instead of waiting to
        # see whether LF follows) dispatches events as soon as a browser does.
        self._after_cr = text.endswith("\r")
        return events

    def _process_line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            comment = line[1:]
            if comment.startswith(" "):
                comment = comment[1:]
            self.comments.append(comment)
            if self._on_comment is not None:
                self._on_comment(comment)
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event_type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\x00" not in value:
                self._id_buffer = value
                self._block_id = value
        elif field == "retry" and _ASCII_DIGITS.fullmatch(value):
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        # The last event ID is committed even by a block without data.
        self.last_event_id = self._id_buffer
        block_id, self._block_id = self._block_id, None
        data, self._data = self._data, []
        event_type, self._event_type = self._event_type, ""
        if not data:
            return None
        return Event(
            type=event_type or "message",
            data="\n".join(data),
            last_event_id=self.last_event_id,
            id=block_id,
        )


class ChunkedDecoder:
    """Incremental decoder for HTTP/1.1 ``Transfer-Encoding: chunked``.

    Chunk extensions and trailer fields are ignored.  The framing is checked
    strictly (CRLF line endings, hex sizes only), because the point of using
    it in tests is to catch a server that corrupts its own stream.

    :ivar finished: ``True`` once the zero-size chunk, any trailers and the
        final CRLF have arrived.
    :ivar unused_data: bytes that arrived after the end of the body.
    """

    # Denial-of-service guard for a size or trailer line that never ends.
    MAX_LINE = 4096

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self.finished = False
        self.unused_data = b""
        self._buf = bytearray()
        self._state = self._SIZE
        self._remaining = 0

    def feed(self, data: bytes) -> bytes:
        """Decode the next piece of the body.

        :param data: raw bytes, split anywhere.
        :returns: the payload bytes this piece completes (maybe empty).
        :raises ValueError: on malformed framing.
        """
        if self.finished:
            self.unused_data += bytes(data)
            return b""
        self._buf += data
        out = bytearray()
        while self._step(out):
            pass
        return bytes(out)

    def _step(self, out: bytearray) -> bool:
        """Advance by one framing element; return False when data runs out."""
        buf = self._buf
        if self._state == self._DATA:
            if not buf:
                return False
            take = min(self._remaining, len(buf))
            out += buf[:take]
            del buf[:take]
            self._remaining -= take
            if not self._remaining:
                self._state = self._DATA_END
            return True
        if self._state == self._DATA_END:
            if len(buf) < 2:
                if buf and buf[0] != 0x0D:
                    raise ValueError(f"chunk data not followed by CRLF: {bytes(buf)!r}")
                return False
            if buf[:2] != b"\r\n":
                raise ValueError(f"chunk data not followed by CRLF: {bytes(buf[:2])!r}")
            del buf[:2]
            self._state = self._SIZE
            return True
        line = self._take_line()
        if line is None:
            return False
        if self._state == self._SIZE:
            size = self._parse_size(line)
            if size:
                self._remaining = size
                self._state = self._DATA
            else:
                self._state = self._TRAILER
        elif not line:
            self.finished = True
            self.unused_data = bytes(buf)
            buf.clear()
            return False
        elif b":" not in line:
            raise ValueError(f"malformed trailer field: {line!r}")
        return True

    def _take_line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > self.MAX_LINE:
                raise ValueError("chunk size or trailer line too long")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    @staticmethod
    def _parse_size(line: bytes) -> int:
        # RFC 9112 7.1.1: chunk-size [ BWS ";" chunk-ext ]; int(x, 16) alone
        # would also take "0x1f", "+1f" or "1_f", which are not chunk sizes.
        size = line.split(b";", 1)[0].rstrip(b" \t")
        if not _HEX_DIGITS.fullmatch(size):
            raise ValueError(f"malformed chunk size line: {line!r}")
        return int(size, 16)


# ---------------------------------------------------------------------------
# HTTP plumbing shared by SSEClient and http_json
# ---------------------------------------------------------------------------


def _host_header(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _request_head(method: str, path: str, headers: HTTPHeaders) -> bytes:
    # A CR or LF smuggled into the request would make the test send a
    # different request from the one it describes, so refuse it loudly.
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"invalid method: {method!r}")
    if not path or any(c in path for c in " \t\r\n\x00"):
        raise ValueError(f"invalid request target: {path!r}")
    lines = [f"{method} {path} HTTP/1.1"]
    for name, value in headers.get_all():
        if any(c in value for c in "\r\n\x00"):
            raise ValueError(f"invalid value for header {name}: {value!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _merge_headers(base: HTTPHeaders, extra: Mapping[str, str] | None) -> None:
    """Let the caller's headers replace the defaults, name by name."""
    for name, value in (extra or {}).items():
        base[name] = str(value)


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, str, HTTPHeaders]:
    """Read a status line and headers, skipping interim 1xx responses."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError(
                f"connection closed before the end of the response head (got {exc.partial!r})"
            ) from None
        except asyncio.LimitOverrunError as exc:
            raise ValueError("response head too large") from exc
        start_line, _, header_text = head.decode("latin-1").partition("\r\n")
        try:
            start = parse_response_start_line(start_line)
            headers = HTTPHeaders.parse(header_text)
        except HTTPInputError as exc:
            raise ValueError(f"malformed response head: {head!r}") from exc
        if 100 <= start.code < 200 and start.code != 101:
            continue
        return start.code, start.reason, headers


def _is_chunked(headers: HTTPHeaders) -> bool:
    codings = [c.strip().lower() for c in headers.get("Transfer-Encoding", "").split(",")]
    return codings[-1] == "chunked"


def _content_length(headers: HTTPHeaders) -> int | None:
    if "Content-Length" not in headers:
        return None
    # Repeated identical values are allowed (RFC 9110 8.6); others are not.
    values = {v.strip() for v in headers["Content-Length"].split(",")}
    if len(values) != 1 or not _ASCII_DIGITS.fullmatch(next(iter(values))):
        raise ValueError(f"malformed Content-Length: {headers['Content-Length']!r}")
    return int(values.pop())


async def _read_body(
    reader: asyncio.StreamReader, method: str, status: int, headers: HTTPHeaders
) -> tuple[bytes, bool]:
    """Read a whole response body.

    :returns: the body and whether its framing says it is complete (always
        true for a body delimited by the connection closing).
    """
    if method.upper() == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b"", True
    if _is_chunked(headers):
        decoder = ChunkedDecoder()
        body = bytearray()
        while not decoder.finished:
            data = await reader.read(_READ_SIZE)
            if not data:
                return bytes(body), False
            body += decoder.feed(data)
        return bytes(body), True
    length = _content_length(headers)
    if length is not None:
        try:
            return await reader.readexactly(length), True
        except asyncio.IncompleteReadError as exc:
            return exc.partial, False
    return await reader.read(), True


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # The peer may already have reset the connection; that is its business.
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# ---------------------------------------------------------------------------
# The stream client
# ---------------------------------------------------------------------------


class StreamEnded(Exception):
    """The stream ended (or was never a stream) before what was awaited came."""


class _Mailbox(Generic[T]):
    """A FIFO that waiters take batches from, and that can be ended.

    Unlike ``asyncio.Queue`` a batch is taken all at once or not at all, so
    a `SSEClient.events` call that times out leaves every event queued.
    """

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._end: tuple[str, BaseException | None] | None = None
        self._changed = asyncio.Event()

    def put(self, item: T) -> None:
        self._items.append(item)
        self._notify()

    def end(self, reason: str, cause: BaseException | None = None) -> None:
        if self._end is None:
            self._end = (reason, cause)
            self._notify()

    def _notify(self) -> None:
        # Waking everyone with a fresh Event each time avoids the lost-wakeup
        # race of clear(): a waiter always waits on the Event that was current
        # when it last found too few items.
        self._changed.set()
        self._changed = asyncio.Event()

    async def take(self, n: int, timeout: float | None, what: str) -> list[T]:
        try:
            async with asyncio.timeout(timeout):
                while len(self._items) < n:
                    if self._end is not None:
                        reason, cause = self._end
                        raise StreamEnded(
                            f"{reason} with {len(self._items)} of {n} {what} pending"
                        ) from cause
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{len(self._items)} of {n} {what} arrived within {timeout} s"
            ) from None
        return [self._items.popleft() for _ in range(n)]


class SSEClient:
    """One ``text/event-stream`` request over a raw socket, like a browser tab.

    Create it with `connect`.  For a 200 response a background task reads
    the body (chunked, by ``Content-Length``, or until the connection
    closes), decodes UTF-8 incrementally (invalid bytes become U+FFFD, as
    in a browser) and feeds an `SSEParser`; events and comments are queued
    separately for `next_event` and `next_comment`.  Any other status is an
    error response: its body is read whole into `body_bytes` and the
    connection is closed.

    Use it as an async context manager, or call `close` / `aclose`, so that
    no socket outlives the test.

    :ivar status: the response status code.
    :ivar reason: the response reason phrase.
    :ivar headers: the response headers (case-insensitive).
    :ivar body_bytes: the body of a non-200 response (``b""`` for a stream).
    :ivar parser: the `SSEParser` fed by the stream.
    :ivar all_events: every event received so far, consumed or not.
    :ivar ended_cleanly: ``True`` if the server ended the body by its framing
        (the chunked terminator, or ``Content-Length`` reached); ``False``
        while open or if the connection just closed.
    :ivar error: the malformed-framing error that ended the stream, if any.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        reason: str,
        headers: HTTPHeaders,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body_bytes = b""
        self.all_events: list[Event] = []
        self.ended_cleanly = False
        self.error: Exception | None = None
        self._reader = reader
        self._writer = writer
        self._events: _Mailbox[Event] = _Mailbox()
        self._comments: _Mailbox[str] = _Mailbox()
        self.parser = SSEParser(on_comment=self._comments.put)
        self._ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10,
    ) -> SSEClient:
        """Open a stream: send ``GET path`` and read the response head.

        Sends ``Host``, ``Accept: text/event-stream`` and, as browsers do,
        ``Cache-Control: no-cache``; ``headers`` (e.g. ``Authorization`` or
        ``Last-Event-ID``) are added and replace those defaults by name.

        :param timeout: seconds allowed for connecting and receiving the
            response head (and, for an error response, its body).
        :returns: the client; check `status` before awaiting events.
        """
        request_headers = HTTPHeaders(
            {
                "Host": _host_header(host, port),
                "Accept": "text/event-stream",
                "Cache-Control": "no-cache",
            }
        )
        _merge_headers(request_headers, headers)
        request = _request_head("GET", path, request_headers)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                await writer.drain()
                status, reason, response_headers = await _read_response_head(reader)
                client = cls(reader, writer, status, reason, response_headers)
                if status != 200:
                    client.body_bytes, client.ended_cleanly = await _read_body(
                        reader, "GET", status, response_headers
                    )
            except BaseException:
                writer.transport.abort()
                raise
        if status == 200:
            client._task = asyncio.get_running_loop().create_task(client._read_stream())
        else:
            await _close_writer(writer)
            client._finish(f"the response was HTTP {status}, not a stream")
        leaks.observe_exchange("GET", path, request_headers, None, status, client.body_bytes if status != 200 else b"")
        return client

    # -- reading ------------------------------------------------------------

    async def _read_stream(self) -> None:
        decoder = ChunkedDecoder() if _is_chunked(self.headers) else None
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        cause: BaseException | None = None
        reason = "the server closed the connection"
        try:
            remaining = None if decoder else _content_length(self.headers)
            while not self.ended_cleanly:
                if remaining == 0:
                    self.ended_cleanly = True
                    break
                size = _READ_SIZE if remaining is None else min(_READ_SIZE, remaining)
                data = await self._reader.read(size)
                if not data:
                    break
                if decoder is not None:
                    data = decoder.feed(data)
                    self.ended_cleanly = decoder.finished
                elif remaining is not None:
                    remaining -= len(data)
                self._deliver(utf8.decode(data))
        except ValueError as exc:
            self.error = cause = exc
            reason = f"the stream was malformed ({exc})"
        except OSError as exc:
            # A reset is "the socket just closed", not a client bug.
            cause = exc
        if self.ended_cleanly:
            reason = "the server ended the stream"
        await _close_writer(self._writer)
        self._finish(reason, cause)

    def _deliver(self, text: str) -> None:
        for event in self.parser.feed(text):
            self.all_events.append(event)
            self._events.put(event)

    def _finish(self, reason: str, cause: BaseException | None = None) -> None:
        self._events.end(reason, cause)
        self._comments.end(reason, cause)
        self._ended.set()

    # -- the test-facing API ------------------------------------------------

    @property
    def comments(self) -> list[str]:
        """Every comment received so far (``"connected"``, ``"ping"``...)."""
        return self.parser.comments

    @property
    def last_event_id(self) -> str:
        """The last event ID a browser would send on reconnect."""
        return self.parser.last_event_id

    @property
    def ended(self) -> bool:
        """Whether the stream is over (by the server, an error or `close`)."""
        return self._ended.is_set()

    async def next_event(self, timeout: float | None = 5) -> Event:
        """Wait for the next event not yet taken.

        :raises TimeoutError: if none arrives in time (nothing is consumed).
        :raises StreamEnded: if the stream ended with no event left.
        """
        return (await self._events.take(1, timeout, "events"))[0]

    async def events(self, n: int, timeout: float | None = 5) -> list[Event]:
        """Wait for the next ``n`` events, all within ``timeout`` seconds.

        :raises TimeoutError: if fewer arrive in time; none is consumed then.
        :raises StreamEnded: if the stream ended with fewer than ``n`` left.
        """
        return await self._events.take(n, timeout, "events")

    async def next_comment(self, timeout: float | None = 5) -> str:
        """Wait for the next comment not yet taken (e.g. ``"ping"``).

        :raises TimeoutError: if none arrives in time.
        :raises StreamEnded: if the stream ended with no comment left.
        """
        return (await self._comments.take(1, timeout, "comments"))[0]

    async def wait_closed(self, timeout: float | None = 5) -> bool:
        """Wait until the stream is over.

        :returns: `ended_cleanly`: ``True`` if the server ended the body by
            its framing, ``False`` if the connection just closed.
        :raises TimeoutError: if the stream is still open after ``timeout``.
        :raises ValueError: if the server's framing was malformed.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._ended.wait()
        except TimeoutError:
            raise TimeoutError(f"the stream was still open after {timeout} s") from None
        if self.error is not None:
            raise ValueError(f"the stream was malformed: {self.error}") from self.error
        return self.ended_cleanly

    def close(self) -> None:
        """Drop the connection at once, like a browser tab being closed.

        Events already received stay available; waiting for more raises
        `StreamEnded`.
        """
        if self._task is not None and not self._task.done():
            self._task.cancel()
        # abort(), not close(): no flushing or half-close, just gone.
        self._writer.transport.abort()
        self._finish("the client closed the connection")

    async def aclose(self) -> None:
        """`close`, then wait until the reader task and socket are gone."""
        self.close()
        if self._task is not None:
            # asyncio.wait does not raise the task's CancelledError, and
            # unlike suppressing it, does not swallow our own cancellation.
            await asyncio.wait([self._task])
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> SSEClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------
# Plain requests
# ---------------------------------------------------------------------------


async def http_json(
    host: str,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, HTTPHeaders, Any, bytes]:
    """Send one request on a fresh connection and read the whole response.

    A raw socket rather than ``AsyncHTTPClient``: nothing is added behind
    the test's back (that client gives a bodiless POST a form Content-Type)
    and there is no shared connection limit.

    :param body: a dict or list is sent as JSON with ``Content-Type:
        application/json``; ``bytes`` or ``str`` (UTF-8) are sent as they are,
        with no Content-Type unless ``headers`` gives one; ``None`` sends no
        body (``Content-Length: 0`` for POST, PUT and PATCH).
    :param headers: added to ``Host``, ``Accept: application/json`` and
        ``Connection: close``, replacing any of them by name.
    :returns: ``(status, headers, parsed JSON or None, raw body bytes)``;
        the JSON is ``None`` when the body is empty or not JSON.
    :raises ConnectionError: if the connection closes before the response
        is complete.
    """
    request_headers = HTTPHeaders(
        {
            "Host": _host_header(host, port),
            "Accept": "application/json",
            "Connection": "close",
        }
    )
    if isinstance(body, (dict, list)):
        payload: bytes | None = json.dumps(body).encode("utf-8")
        request_headers["Content-Type"] = "application/json"
    elif isinstance(body, str):
        payload = body.encode("utf-8")
    elif body is None or isinstance(body, bytes):
        payload = body
    else:
        raise TypeError(f"unsupported body type: {type(body).__name__}")
    if payload is not None:
        request_headers["Content-Length"] = str(len(payload))
    elif method.upper() in ("POST", "PUT", "PATCH"):
        request_headers["Content-Length"] = "0"
    _merge_headers(request_headers, headers)
    request = _request_head(method, path, request_headers) + (payload or b"")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            await writer.drain()
            status, _, response_headers = await _read_response_head(reader)
            raw, complete = await _read_body(reader, method, status, response_headers)
        finally:
            await _close_writer(writer)
    if not complete:
        raise ConnectionError(f"response body cut short after {len(raw)} bytes: {raw!r}")
    leaks.observe_exchange(method, path, request_headers, body, status, raw)
    parsed = None
    if raw.strip():
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
    return status, response_headers, parsed, raw
