"""Raw HTTP/1.1 exchanges: bytes written by hand on a socket, responses read as they come.

For tests whose point is the framing, so that nothing is added or fixed
behind their back: pipelining, ``Expect: 100-continue``, chunked or
oversized bodies, malformed requests, hostile clients.

- :class:`Raw` is one such connection to a server under test, with
  :func:`post_head` and :func:`chunked` to write a request's head and body,
  for tests that know the answer's shape (a ``Content-Length`` body);
- :func:`open_raw`, :func:`send_pieces` and :func:`read_response` serve
  tests that compare what any server does with any bytes
  (``tests/test_http_differential.py``, ``tests/test_http_fuzz.py``): each
  response read strictly (status line, headers, a body framed by
  ``Content-Length``, chunks or the end of the connection), and whether
  the connection ends.

Nothing here imports the product.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

from tornado.httputil import HTTPHeaders, HTTPInputError, parse_response_start_line

_HEX = re.compile(rb"[0-9A-Fa-f]+")
#: A response head larger than this is not one a server here sends.
HEAD_LIMIT = 64 * 1024
#: alice's notifications: the usual target of a hand-written ``POST``.
NOTIFICATIONS = "/api/v1/users/alice/notifications"


class Raw:
    """One hand-written HTTP/1.1 exchange on a raw socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server) -> Raw:
        """Connect to ``server`` (anything with ``host`` and ``port``)."""
        return cls(*await asyncio.open_connection(server.host, server.port))

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until the kernel has taken it."""
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, HTTPHeaders, bytes]:
        """Read one response: ``(status, headers, body)`` (bodies here have a Content-Length)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        start, _, rest = head.decode("latin-1").partition("\r\n")
        headers = HTTPHeaders.parse(rest)
        body = await self.reader.readexactly(int(headers.get("Content-Length", "0")))
        return int(start.split(" ")[1]), headers, body

    async def closed_by_server(self) -> bytes:
        """Everything the server still sends before it closes the connection."""
        return await self.reader.read()

    async def close(self) -> None:
        """Close our end."""
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def post_head(server, length: int | None, extra: str = "", path: str = NOTIFICATIONS, user: str = "alice") -> bytes:
    """The head of an authenticated JSON ``POST``; ``length=None`` sends it chunked.

    :param server: a server under test (``host``, ``port``, ``token()``).
    """
    framing = "Transfer-Encoding: chunked\r\n" if length is None else f"Content-Length: {length}\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
        f"Authorization: Bearer {server.token(user)}\r\nContent-Type: application/json\r\n"
        f"{framing}{extra}\r\n"
    ).encode("latin-1")


def chunked(*pieces: bytes) -> bytes:
    """``pieces`` as a chunked body, with the terminating chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


class Malformed(Exception):
    """The server sent something that is not a complete HTTP/1.1 response."""


@dataclasses.dataclass(frozen=True)
class Response:
    """One response as read off the wire.

    :ivar status: its status code.
    :ivar headers: its headers.
    :ivar body: its body (empty for an event stream, which is not read).
    :ivar until_close: the body was delimited by the end of the connection.
    """

    status: int
    headers: HTTPHeaders
    body: bytes
    until_close: bool = False

    @property
    def status_class(self) -> str:
        """``"2xx"``, ``"4xx"``...: what the differential suite compares."""
        return f"{self.status // 100}xx"

    @property
    def is_stream(self) -> bool:
        """An event stream (whose body does not end by itself)."""
        return self.headers.get("Content-Type", "").startswith("text/event-stream")


async def open_raw(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to ``host:port``."""
    return await asyncio.open_connection(host, port, limit=HEAD_LIMIT)


async def send_pieces(writer: asyncio.StreamWriter, pieces: tuple[bytes, ...] | list[bytes], gap: float) -> bool:
    """Write ``pieces`` one at a time, ``gap`` seconds apart; :returns: whether all were taken.

    A gap lets the server read each piece separately (nothing a server
    does may depend on where a client's writes end; this is how the
    tests make sure).  A server that closed meanwhile ends the sending.
    """
    try:
        for index, piece in enumerate(pieces):
            if index and gap:
                await asyncio.sleep(gap)
            writer.write(piece)
            await writer.drain()
    except ConnectionError:
        return False
    return True


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> Response | None:
    """The next response on ``reader``, or None if the connection ended first.

    :param head_only: the response answers a ``HEAD`` (it has no body).
    :raises Malformed: the bytes are not a response, or the connection
        ended inside one.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise Malformed(f"the connection ended inside a response head: {exc.partial[:80]!r}") from None
        return None
    except asyncio.LimitOverrunError:
        raise Malformed("a response head over 64 KiB") from None
    except ConnectionError:
        return None
    text = head.decode("latin-1")
    line, _, rest = text.partition("\r\n")
    try:
        status = parse_response_start_line(line).code
        headers = HTTPHeaders.parse(rest)
    except HTTPInputError as exc:
        raise Malformed(f"not an HTTP/1.1 response ({exc}): {head[:80]!r}") from None
    if head_only or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"")
    if headers.get("Content-Type", "").startswith("text/event-stream"):
        return Response(status, headers, b"")
    try:
        if headers.get("Transfer-Encoding", "").lower() == "chunked":
            return Response(status, headers, await _read_chunked(reader))
        if "Content-Length" in headers:
            return Response(status, headers, await reader.readexactly(int(headers["Content-Length"])))
        return Response(status, headers, await reader.read(), until_close=True)
    except (asyncio.IncompleteReadError, ConnectionError):
        raise Malformed(f"the connection ended inside the body of a {status} response") from None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        line = (await reader.readuntil(b"\r\n"))[:-2]
        size = line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size):
            raise Malformed(f"a bad chunk size line: {line[:40]!r}")
        length = int(size, 16)
        if length == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields
            return bytes(body)
        body += await reader.readexactly(length)
        if await reader.readexactly(2) != b"\r\n":
            raise Malformed("a chunk not followed by CRLF")


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close our end, whatever state the connection is in."""
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass
