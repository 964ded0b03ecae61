"""Generated raw requests against the connection layer (core/transport/http1.py): answered or closed, never a 5xx.

Hypothesis builds requests from plausible parts (methods, the app's real
routes and odd targets, versions, header lines for ``Host``,
``Content-Length``, ``Transfer-Encoding``, ``Connection``, ``Expect``,
``Upgrade`` and credentials, bodies plain or chunk-framed, well or badly),
pipelines one to three of them, then damages the bytes (junk inserted,
truncation) and sends them in pieces on a fresh connection, usually followed
by a ``GET /health`` with ``Connection: close``.  The property, for each:
within :data:`DEADLINE` the server has sent zero or more complete HTTP/1.1
responses, none of them 5xx, and closed the connection (an event stream, once
its head is in, counts as answered); and it logged nothing at ERROR or with
a traceback.  The server's idle and body deadlines are short, so that a
request left waiting ends quickly.

Generation is derandomized and the example database is off: every run
sends the same 250 requests.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.rawhttp import Malformed, Response, close_writer, open_raw, read_response, send_pieces

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

#: The server's idle and body deadlines (seconds): what a stalled request costs an example.
SHORT = 0.25
#: Seconds within which a connection must have ended, whatever was sent.
DEADLINE = 10.0
#: Seconds between two pieces of an example.
PIECE_GAP = 0.002
#: Replaced by a valid token for ``alice``.
TOKEN = b"{TOKEN}"
#: Replaced by the ``Content-Length`` the body really has.
LENGTH = b"{LENGTH}"
PROBE = b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
NOTIFICATION = b'{"type":"info","message":"hello"}'

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    # One server serves every example (each on its own connection);
    # starting one per example would be the slow part.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the parts of a request --------------------------------------------------------------
#
# Each part is usually what a client sends and now and then something odd
# (``rarely``), so that most requests get past the parser to the app, and
# the odd parts meet each other in every combination.


def rarely(draw: st.DrawFn, odds: int = 10) -> bool:
    """True about once in ``odds`` draws."""
    return draw(st.integers(0, odds - 1)) == 0


def usually(draw: st.DrawFn, usual: bytes, odd: st.SearchStrategy[bytes], odds: int = 10) -> bytes:
    """``usual``, or about once in ``odds`` draws one of ``odd``."""
    return draw(odd) if rarely(draw, odds) else usual


#: Not ``HEAD``: its answers have no body, which the reader must know (see :func:`head_requests`).
methods = st.sampled_from([b"GET", b"POST", b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
odd_methods = st.sampled_from([b"TRACE", b"CONNECT", b"PRI", b"FOO", b"get", b"G ET", b""])
#: Methods whose requests usually carry a body.
WITH_BODY = (b"POST", b"PUT", b"PATCH")
USER = b"/api/v1/users/alice/notifications"
targets = st.sampled_from([
    b"/health", b"/health/sse", b"/metrics", b"/api/v1/stats", b"/api/v1/openapi.json", b"/", b"/static/app.js",
    b"/api/v1/events", b"/api/v1/auth/login", b"/api/v1/auth/logout", b"/api/v1/auth/stream-ticket",
    USER, USER + b"?limit=5", USER + b"/stream", USER + b"/stream?token=" + TOKEN,
    USER + b"/stream?token=nope&lastEventId=1", USER + b"/unread-count", USER + b"/read-all", USER + b"/n-1",
    b"/api/v1/users/bob/notifications", b"/api/v1/users/%ff/notifications", b"/nowhere",
])
odd_targets = st.sampled_from([
    b"*", b"http://t/health", b"t:443", b"/health?" + b"&".join(b"f%d=1" % field for field in range(1001)), b"/%zz",
    b"/static/../server.py", b"//", b"", b"/health#x", b"/he\x00alth", b"/caf\xe9",
    b"/health?pad=" + b"a" * (33 * 1024), b"/health?pad=" + b"a" * (70 * 1024),
]) | st.binary(max_size=24).map(lambda tail: b"/" + tail)
odd_versions = st.sampled_from([b"HTTP/1.0", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1",
                                b"HTTP/1.1 ", b"HTTP/11"])
odd_hosts = st.sampled_from([[], [(b"Host", b"t"), (b"Host", b"u")]] + [
    [(b"Host", host)] for host in (b"127.0.0.1:8888", b"[::1]:80", b"", b"a b", b"a,b", b"evil.example/x",
                                   b"example.com.", b"h:1:2")])

#: Kinds of header line besides ``Host``, each a strategy for ``(name,
#: value)``: a kind is drawn first, then its line (``st.one_of`` does not
#: draw its branches evenly).  The body's framing first.
HEADER_KINDS = [
    st.tuples(st.just(b"Content-Length"), st.sampled_from([LENGTH] * 8 + [
        b"0", b"5", b"300000", b"abc", b"-1", b"+5", b"1, 1", b"99999999999999999999", b"", b"0x5"])),
    st.tuples(st.just(b"Transfer-Encoding"), st.sampled_from([b"chunked"] * 8 + [
        b"Chunked", b"gzip, chunked", b"identity", b"chunked, identity", b"xchunked", b"\x0bchunked"])),
    st.tuples(st.just(b"Connection"), st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"keep-alive, close",
                                                       b"Upgrade, HTTP2-Settings"])),
    st.tuples(st.just(b"Expect"), st.sampled_from([b"100-continue", b"100-continue", b"100-Continue", b"200-ok"])),
    st.tuples(st.just(b"Upgrade"), st.sampled_from([b"h2c", b"websocket"])),
    st.tuples(st.just(b"Authorization"), st.sampled_from([b"Bearer " + TOKEN] * 3 + [b"Bearer nope", b"Basic eDp5",
                                                                                     b"Bearer"])),
    st.tuples(st.just(b"Content-Type"), st.sampled_from([b"application/json"] * 3 + [b"text/plain",
                                                                                     b"application/json; charset=x"])),
    st.tuples(st.sampled_from([b"Cookie", b"Origin", b"Last-Event-ID", b"X-Connection-Id"]),
              st.sampled_from([b"access_token=" + TOKEN, b"http://t", b"http://evil.example", b"0", b"abc"])),
    st.tuples(st.just(b"X-Test"), st.sampled_from([b"1", b"", b" padded ", b"caf\xe9", b"a" * 200])),
]
#: A header line nothing should accept.
bad_header_lines = st.tuples(st.sampled_from([b"Bad Header", b"X-Test ", b"", b"X\x00", b"X-Test"]),
                             st.binary(max_size=12))
BODIES = [NOTIFICATION, NOTIFICATION, NOTIFICATION, b"", b"{}", b'{"type":', b'{"type":"info","message":"\xff"}',
          b'{"event":"x.y","userIds":["alice"],"data":{}}', b" " * 70_000, b" " * 270_000]


def header_line(draw: st.DrawFn, framing: bool = True) -> tuple[bytes, bytes]:
    """One header line; none for the body's framing unless ``framing``."""
    if rarely(draw, 15):
        return draw(bad_header_lines)
    return draw(draw(st.sampled_from(HEADER_KINDS if framing else HEADER_KINDS[2:])))


def body(draw: st.DrawFn) -> bytes:
    """A body: the usual JSON, broken JSON, a large one, now and then arbitrary bytes."""
    if rarely(draw, 6):
        return draw(st.binary(max_size=48))
    return draw(st.sampled_from(BODIES))


@st.composite
def chunk_framing(draw: st.DrawFn, content: bytes) -> bytes:
    """``content`` in chunks, now and then framed wrong (sizes, extensions, trailers, the end)."""
    cuts = sorted(draw(st.sets(st.integers(0, len(content)), max_size=4)))
    pieces = [content[start:end] for start, end in zip([0, *cuts], [*cuts, len(content)], strict=True) if end > start]
    out = bytearray()
    for piece in pieces:
        size = b"%x" % len(piece)
        size = usually(draw, size, st.sampled_from([size.upper(), b"%x" % (len(piece) + 1), b"zz", b"-1", b"f" * 20,
                                                    size + b";ext=1", size + b";e\x01", size + b" "]), 8)
        out += size + b"\r\n" + piece + usually(draw, b"\r\n", st.sampled_from([b"\n", b"", b"XX"]), 12)
    return bytes(out + usually(draw, b"0\r\n\r\n", st.sampled_from([b"0\r\nX-Trailer: 1\r\n\r\n", b"0\r\n", b"",
                                                                     b"0\n\n"]), 8))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request: its line, header lines (a ``Host``; a credential on a ``POST``), a body."""
    method = draw(odd_methods) if rarely(draw, 15) else draw(methods)
    sep = usually(draw, b" ", st.sampled_from([b"  ", b"\t"]), 20)
    eol = usually(draw, b"\r\n", st.sampled_from([b"\n", b"\r"]), 20)
    create = method == b"POST" and not rarely(draw, 3)  # in the fast lane's shape, unless something else breaks it
    target = USER if create else draw(odd_targets) if rarely(draw, 8) else draw(targets)
    line = method + sep + target + sep + usually(draw, b"HTTP/1.1", odd_versions, 8)
    fields = list(draw(odd_hosts)) if rarely(draw, 12) else [(b"Host", b"t")]
    if create:
        fields += [(b"Authorization", b"Bearer " + TOKEN), (b"Content-Type", b"application/json")]
    names = {name for name, _ in fields}
    for _ in range(draw(st.integers(0, 3))):
        name, value = header_line(draw)
        if name not in names or rarely(draw, 4):  # a header twice, now and then
            fields.append((name, value))
            names.add(name)
    content = body(draw) if method in WITH_BODY or rarely(draw) else b""
    if b"Transfer-Encoding" in names:
        content = draw(chunk_framing(content))
    elif content and b"Content-Length" not in names and not rarely(draw, 8):
        fields.append((b"Content-Length", LENGTH))
    fields = draw(st.permutations(fields))
    head = line + eol + b"".join(name + b": " + value.replace(LENGTH, b"%d" % len(content)) + eol
                                 for name, value in fields)
    return head + eol + content


@st.composite
def head_requests(draw: st.DrawFn) -> bytes:
    """A ``HEAD`` request whose framing is intact (its answer has no body, so the reader must know)."""
    line = b"HEAD " + (draw(odd_targets) if rarely(draw, 8) else draw(targets)) + b" " + \
        usually(draw, b"HTTP/1.1", odd_versions, 8)
    fields = list(draw(odd_hosts)) if rarely(draw, 12) else [(b"Host", b"t")]
    fields += [header_line(draw, framing=False) for _ in range(draw(st.integers(0, 3)))]
    return line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n"


JUNK = st.sampled_from([b"\x00", b"\r", b"\n", b" ", b":", b"\r\n\r\n", b"0\r\n\r\n", b"\x16\x03\x01", b"\xff"]) | \
    st.binary(min_size=1, max_size=16)


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """``(pieces to send, the first answer is to a HEAD)``: 1-3 requests, damaged now and then, then the probe."""
    if rarely(draw):
        data, head = draw(head_requests()), True
    else:
        data = b"".join(draw(st.lists(requests(), min_size=1, max_size=3)))
        head = False
        if rarely(draw, 6):
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(JUNK) + data[at:]
        if rarely(draw, 8):
            data = data[:draw(st.integers(0, len(data)))]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=3)))
    pieces = [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True) if end > start]
    if not rarely(draw, 5):
        pieces.append(PROBE)
    return pieces, head


# -- the property ------------------------------------------------------------------------


@pytest.fixture
def fuzz_server(make_server):
    """A server with short idle and body deadlines (a stalled request ends in a fraction of a second)."""
    return make_server(idle_timeout=SHORT, body_timeout=SHORT)


async def exercise(server, pieces: list[bytes], head: bool) -> list[Response]:
    """Send ``pieces``; :returns: every response, once the server has closed the connection.

    :raises asyncio.TimeoutError: the connection did not end within :data:`DEADLINE`.
    :raises Malformed: a response was incomplete or not HTTP/1.1.
    """
    token = server.token("alice").encode()
    reader, writer = await open_raw(server.host, server.port)
    responses: list[Response] = []
    try:
        async with asyncio.timeout(DEADLINE):
            await send_pieces(writer, [piece.replace(TOKEN, token) for piece in pieces], PIECE_GAP)
            while True:
                answered = any(response.status >= 200 for response in responses)
                response = await read_response(reader, head_only=head and not answered)
                if response is None:
                    return responses
                responses.append(response)
                if response.until_close or response.is_stream:
                    return responses
    finally:
        await close_writer(writer)


@FUZZ
@given(exchange=exchanges())
def test_any_bytes_are_answered_without_a_5xx_or_closed_in_time(io_loop, fuzz_server, no_error_logged, caplog,
                                                                exchange):
    pieces, head = exchange
    before = len(caplog.get_records("call"))
    try:
        responses = io_loop.run_sync(lambda: exercise(fuzz_server, pieces, head), timeout=DEADLINE + 5)
    except TimeoutError:
        pytest.fail(f"the connection neither ended nor answered within {DEADLINE} s; sent {pieces!r}")
    except Malformed as exc:
        pytest.fail(f"a broken answer: {exc}; sent {pieces!r}")
    assert all(response.status < 500 for response in responses), ([response.status for response in responses], pieces)
    errors = [record.getMessage() for record in caplog.get_records("call")[before:]
              if record.levelno >= logging.ERROR or record.exc_info]
    assert not errors, (errors, pieces)
