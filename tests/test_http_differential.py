"""The connection layer (core/transport/http1.py) against Tornado's own HTTPServer, on the same bytes.

Each case of :data:`CORPUS` is a request (or several, or a fragment) written
byte for byte, possibly in several pieces, and replayed on a fresh
connection against both: our server (``make_server``: this layer and the
lane, as in production) and plain Tornado, its
``tornado.httpserver.HTTPServer`` serving the same ``NotifyApp`` through
its RequestHandlers (the lane off), with the same limits and deadlines.  What each
did is written as one line: the status class of every answer (``none``
when there was none), then whether the connection stayed usable
afterwards, decided by a probe: once the case's answers are in, a
``GET /health`` with ``Connection: close`` goes out on the same
connection, and ``open`` means it was answered (200, or 503 when the
database check is slow on a busy machine).  Both servers run with 3 s
idle and body deadlines, so a case that leaves a server waiting for more
input ends in seconds, and the cases run concurrently (much shorter
deadlines cut off well-formed cases on a busy machine).

Every case must come out the same on both, or be listed in
:data:`DIFFERENCES` with what each does and why ("stricter here, because
..." or "differs, because ..."; docs/ARCHITECTURE.md sums the table up).
A listed case that stops differing fails too, so the table stays true.
Our server never answers 5xx, never leaves a case hanging and logs no
error; Tornado's server runs in a thread of its own, so that what it logs
is told apart (by thread) and left to it.  Interim ``100 Continue`` answers
are not compared: Tornado also sends one for a request without a body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from typing import Any

import pytest
import tornado.netutil
from tornado.httpserver import HTTPServer

from core.runtime.config import Config
from server import make_app, make_http_server
from tests.conftest import SECRET
from tests.support.rawhttp import Malformed, close_writer, open_raw, read_response, send_pieces

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_error_logged")]

#: Both servers' idle and body deadlines, in seconds.
SHORT = 3.0
#: Seconds to wait for any one response (a waiting server closes well before).
READ_TIMEOUT = 5.0
#: Seconds between two pieces of a case, so that the server reads them apart.
PIECE_GAP = 0.05
#: Sent once a case's answers are in: answered (200, or 503) if the connection is still usable.
PROBE = b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
#: Replaced by a valid token for ``alice`` (the servers share their secret).
TOKEN = b"{TOKEN}"


@dataclasses.dataclass(frozen=True)
class Case:
    """Bytes to send and how many answers to wait for before the probe.

    :ivar pieces: written one at a time, :data:`PIECE_GAP` apart.
    :ivar answers: final answers a server may give to them, at most.
    :ivar head: the requests are ``HEAD`` requests (answers without a body).
    """

    pieces: tuple[bytes, ...]
    answers: int = 1
    head: bool = False


def case(*pieces: bytes, answers: int = 1, head: bool = False) -> Case:
    """A :class:`Case` of ``pieces``."""
    return Case(pieces, answers, head)


def req(line: bytes = b"GET /health HTTP/1.1", headers: bytes = b"Host: t\r\n", body: bytes = b"") -> bytes:
    """A request: its line, header lines (each ending in CRLF), the blank line, ``body``."""
    return line + b"\r\n" + headers + b"\r\n" + body


def post(headers: bytes, body: bytes = b"", path: bytes = b"/api/v1/events") -> bytes:
    """A ``POST`` to a handler route (no credential: 401 once the body is read)."""
    return req(b"POST " + path + b" HTTP/1.1", b"Host: t\r\nContent-Type: application/json\r\n" + headers, body)


def chunked_post(body: bytes, te: bytes = b"chunked") -> bytes:
    """A ``POST`` to a handler route with ``Transfer-Encoding: te`` and ``body`` as it is."""
    return post(b"Transfer-Encoding: " + te + b"\r\n", body)


NOTIFICATION = b'{"type":"info","message":"hello"}'
LANE = b"/api/v1/users/alice/notifications"


def publish(extra: bytes = b"", body: bytes = NOTIFICATION, host: bytes = b"Host: t\r\n",
            length: bytes | None = None) -> bytes:
    """A create in the lane's usual shape: ``Authorization``, JSON, ``Content-Length`` (none if ``length`` is empty)."""
    length = str(len(body)).encode() if length is None else length
    framing = b"Content-Length: " + length + b"\r\n" if length else b""
    return req(b"POST " + LANE + b" HTTP/1.1",
               host + b"Authorization: Bearer " + TOKEN + b"\r\nContent-Type: application/json\r\n" + framing + extra,
               body)


QUERY_1000 = "&".join(f"f{i}=1" for i in range(1000)).encode()
#: A request line plus headers this long is just under / over ``--max-header-kb`` (32 KiB).
UNDER_HEADER_LIMIT = b"/health?pad=" + b"a" * (32 * 1024 - 200)
OVER_HEADER_LIMIT = b"/health?pad=" + b"a" * (33 * 1024)
#: Over the header buffer (twice ``--max-header-kb``, 64 KiB): nothing reads further.
OVER_HEADER_BUFFER = b"/health?pad=" + b"a" * (70 * 1024)

CORPUS: dict[str, Case] = {
    # -- the request line ------------------------------------------------------------
    "a well-formed GET": case(req()),
    "no version (HTTP/0.9) with a Host": case(b"GET /health\r\nHost: t\r\n\r\n"),
    "no version (HTTP/0.9), bare": case(b"GET /health\r\n\r\n"),
    "HTTP/2.0 request line": case(req(b"GET /health HTTP/2.0")),
    "HTTP/2 connection preface": case(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    "HTTP/1.2 request line": case(req(b"GET /health HTTP/1.2")),
    "lowercase version": case(req(b"GET /health http/1.1")),
    "lowercase method": case(req(b"get /health HTTP/1.1")),
    "unknown method": case(req(b"FOO /health HTTP/1.1")),
    "tab between method and target": case(req(b"GET\t/health HTTP/1.1")),
    "two spaces before the target": case(req(b"GET  /health HTTP/1.1")),
    "space after the version": case(req(b"GET /health HTTP/1.1 ")),
    "nothing after the target": case(req(b"GET /health ")),
    "NUL in the target": case(req(b"GET /he\x00alth HTTP/1.1")),
    "obs-text in the target": case(req(b"GET /health\xff HTTP/1.1")),
    "empty lines before the request": case(b"\r\n\r\n" + req()),
    "half a request line, then nothing": case(b"GET /hea"),
    "a header block never ended": case(b"GET /health HTTP/1.1\r\nHost: t\r\n"),
    "TLS handshake bytes": case(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32))),
    # -- header lines ----------------------------------------------------------------
    "header name with a space": case(req(headers=b"Host: t\r\nBad Header: 1\r\n")),
    "header line without a colon": case(req(headers=b"Host: t\r\nNoColonHere\r\n")),
    "empty header name": case(req(headers=b"Host: t\r\n: x\r\n")),
    "invalid character in a header name": case(req(headers=b"Host: t\r\nX-A@b: 1\r\n")),
    "space before a colon": case(req(headers=b"Host: t\r\nX-Test : 1\r\n")),
    "control character in a header value": case(req(headers=b"Host: t\r\nX-Test: a\x01b\r\n")),
    "NUL in a header value": case(req(headers=b"Host: t\r\nX-Test: a\x00b\r\n")),
    "DEL in a header value": case(req(headers=b"Host: t\r\nX-Test: a\x7fb\r\n")),
    "obs-text in a header value": case(req(headers=b"Host: t\r\nX-Test: caf\xe9\r\n")),
    "tabs and spaces around a header value": case(req(headers=b"Host: t\r\nX-Test: \t v \t\r\n")),
    "obs-fold continuation line": case(req(headers=b"Host: t\r\nX-Test: a\r\n b\r\n")),
    "bare LF line endings": case(b"GET /health HTTP/1.1\nHost: t\n\n"),
    "bare LF ending the header block": case(b"GET /health HTTP/1.1\r\nHost: t\r\n\n"),
    "bare CR inside a header value": case(req(headers=b"Host: t\r\nX-Test: a\rb\r\n")),
    # -- Content-Length ---------------------------------------------------------------
    "non-numeric Content-Length": case(post(b"Content-Length: abc\r\n", b"{}")),
    "negative Content-Length": case(post(b"Content-Length: -2\r\n", b"{}")),
    "Content-Length with a plus sign": case(post(b"Content-Length: +2\r\n", b"{}")),
    "empty Content-Length": case(post(b"Content-Length: \r\n", b"{}")),
    "Content-Length overflow": case(post(b"Content-Length: 99999999999999999999999\r\n", b"{}")),
    "two differing Content-Lengths": case(post(b"Content-Length: 2\r\nContent-Length: 3\r\n", b"{}x")),
    "two equal Content-Lengths": case(post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}")),
    "a Content-Length list of equal values": case(post(b"Content-Length: 2, 2\r\n", b"{}")),
    "Content-Length longer than the body sent": case(post(b"Content-Length: 10\r\n", b"{}")),
    "Content-Length shorter than the body sent": case(post(b"Content-Length: 2\r\n", b"{}garbage\r\n\r\n"),
                                                      answers=2),
    "Content-Length over the body limit": case(post(b"Content-Length: 300000\r\n")),
    "Content-Length on a GET": case(req(headers=b"Host: t\r\nContent-Length: 5\r\n", body=b"hello")),
    # -- Transfer-Encoding and smuggling shapes ------------------------------------------
    "a chunked body": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n")),
    "an empty chunked body": case(chunked_post(b"0\r\n\r\n")),
    "CL.TE: Content-Length and chunked": case(
        post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"), answers=2),
    "TE.CL: chunked and a short Content-Length": case(
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"), answers=2),
    "Transfer-Encoding: identity": case(chunked_post(b"{}", te=b"identity"), answers=2),
    "Transfer-Encoding: gzip": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n", te=b"gzip")),
    "Transfer-Encoding: gzip, chunked": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n", te=b"gzip, chunked")),
    "Transfer-Encoding: chunked, identity": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n", te=b"chunked, identity")),
    "Transfer-Encoding: identity, chunked": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n", te=b"identity, chunked")),
    "Transfer-Encoding: xchunked": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n", te=b"xchunked")),
    "a vertical tab before chunked": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n", te=b"\x0bchunked")),
    "Transfer-Encoding folded onto a second line": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n", te=b"\r\n chunked")),
    "Content-Length in hexadecimal": case(post(b"Content-Length: 0x2\r\n", b"{}")),
    "Transfer-Encoding: Chunked (capitalised)": case(chunked_post(b"2\r\n{}\r\n0\r\n\r\n", te=b"Chunked")),
    "two Transfer-Encoding: chunked headers": case(
        post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n")),
    "space before the colon of Transfer-Encoding": case(
        post(b"Transfer-Encoding : chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n")),
    "Transfer-Encoding on a GET": case(req(headers=b"Host: t\r\nTransfer-Encoding: chunked\r\n",
                                           body=b"3\r\nabc\r\n0\r\n\r\n")),
    "chunked on HTTP/1.0": case(req(b"POST /api/v1/events HTTP/1.0",
                                    b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n",
                                    b"2\r\n{}\r\n0\r\n\r\n")),
    "invalid chunk size": case(chunked_post(b"zz\r\n{}\r\n0\r\n\r\n")),
    "negative chunk size": case(chunked_post(b"-2\r\n{}\r\n0\r\n\r\n")),
    "chunk size with a trailing space": case(chunked_post(b"2 \r\n{}\r\n0\r\n\r\n")),
    "chunk size overflow": case(chunked_post(b"fffffffffffffffffffff\r\n{}\r\n0\r\n\r\n")),
    "chunk extension": case(chunked_post(b"2;name=value\r\n{}\r\n0\r\n\r\n")),
    "chunk extension without a value": case(chunked_post(b"2;name\r\n{}\r\n0\r\n\r\n")),
    "control character in a chunk extension": case(chunked_post(b"2;a\x01b\r\n{}\r\n0\r\n\r\n")),
    "trailer fields": case(chunked_post(b"2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n")),
    "chunk data not followed by CRLF": case(chunked_post(b"2\r\n{}XX0\r\n\r\n")),
    "chunk size line ending in a bare LF": case(chunked_post(b"2\n{}\r\n0\r\n\r\n")),
    "last chunk without the final CRLF": case(chunked_post(b"2\r\n{}\r\n0\r\n")),
    "chunked body never ended": case(chunked_post(b"2\r\n{}\r\n")),
    "one huge chunk within the body limit": case(chunked_post(b"%x\r\n%s\r\n0\r\n\r\n" % (200_000, b" " * 200_000))),
    "one chunk over the body limit": case(chunked_post(b"%x\r\n%s\r\n0\r\n\r\n" % (300_000, b" " * 300_000))),
    "a thousand one-byte chunks": case(chunked_post(b"1\r\n \r\n" * 1000 + b"0\r\n\r\n")),
    "chunks sent in pieces": case(chunked_post(b"")[:-2], b"\r\n1\r\n{", b"\r\n1\r\n}\r\n", b"0\r\n\r\n"),
    # -- Host ----------------------------------------------------------------------------
    "no Host on HTTP/1.1": case(req(headers=b"")),
    "two Host headers": case(req(headers=b"Host: a.example\r\nHost: b.example\r\n")),
    "empty Host": case(req(headers=b"Host: \r\n")),
    "Host with a space": case(req(headers=b"Host: bad host\r\n")),
    "Host with a slash": case(req(headers=b"Host: evil.example/path\r\n")),
    "Host with an at sign": case(req(headers=b"Host: user@evil.example\r\n")),
    "Host with a comma": case(req(headers=b"Host: a.example,b.example\r\n")),
    "IPv6 Host with a port": case(req(headers=b"Host: [::1]:8888\r\n")),
    "Host with a port": case(req(headers=b"Host: example.com:8080\r\n")),
    "Host with a trailing dot": case(req(headers=b"Host: example.com.\r\n")),
    "Host with two ports": case(req(headers=b"Host: example.com:80:81\r\n")),
    "a create in the lane's usual shape without Host": case(publish(host=b"")),
    "a stream open in the lane's usual shape without Host": case(
        req(b"GET " + LANE + b"/stream HTTP/1.1", b"Authorization: Bearer not-a-token\r\n")),
    # -- versions and keep-alive --------------------------------------------------------------
    "HTTP/1.0 with Host": case(req(b"GET /health HTTP/1.0")),
    "HTTP/1.0 without Host": case(req(b"GET /health HTTP/1.0", b"")),
    "HTTP/1.0 keep-alive": case(req(b"GET /health HTTP/1.0", b"Connection: keep-alive\r\n")),
    "HTTP/1.0 keep-alive, a body without a length": case(
        req(b"DELETE /api/v1/users/alice/notifications/n1 HTTP/1.0", b"Connection: keep-alive\r\n")),
    "HTTP/1.1 Connection: close": case(req(headers=b"Host: t\r\nConnection: close\r\n")),
    "Connection: keep-alive, close": case(req(headers=b"Host: t\r\nConnection: keep-alive, close\r\n")),
    # -- request targets ---------------------------------------------------------------------
    "absolute-form target": case(req(b"GET http://t/health HTTP/1.1")),
    "absolute-form target naming another host": case(req(b"GET http://elsewhere.example/health HTTP/1.1")),
    "OPTIONS *": case(req(b"OPTIONS * HTTP/1.1")),
    "CONNECT with an authority-form target": case(req(b"CONNECT t:443 HTTP/1.1")),
    "an empty query": case(req(b"GET /health? HTTP/1.1")),
    "a fragment in the target": case(req(b"GET /health#top HTTP/1.1")),
    "a percent-encoded path": case(req(b"GET /%68ealth HTTP/1.1")),
    "an unknown route": case(req(b"GET /nowhere HTTP/1.1")),
    # -- pipelining ----------------------------------------------------------------------------
    "three GETs in one write": case(req() * 3, answers=3),
    "GET, a malformed request, GET in one write": case(req() + b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n" + req(),
                                                       answers=3),
    "GET, no Host, GET in one write": case(req() + req(headers=b"") + req(), answers=3),
    "a create and a GET in one write": case(publish() + req(), answers=2),
    "a request split inside its head": case(b"GET /hea", b"lth HTTP/1.1\r\nHo", b"st: t\r\n", b"\r\n"),
    "two requests split across writes": case(req()[:10], req()[10:] + req()[:5], req()[5:], answers=2),
    "junk after a create": case(publish() + b"\x16\x03\x01 not http\r\n\r\n", answers=2),
    # -- Expect ----------------------------------------------------------------------------------
    "Expect: 100-continue, the body after a pause": case(
        post(b"Content-Length: 2\r\nExpect: 100-continue\r\n"), b"{}"),
    "Expect: 100-continue, the body in the same write": case(
        post(b"Content-Length: 2\r\nExpect: 100-continue\r\n", b"{}")),
    "Expect: 100-continue on a GET without a body": case(req(headers=b"Host: t\r\nExpect: 100-continue\r\n")),
    "Expect: 100-continue with Content-Length: 0": case(post(b"Content-Length: 0\r\nExpect: 100-continue\r\n")),
    "Expect: 100-continue over the body limit": case(post(b"Content-Length: 300000\r\nExpect: 100-continue\r\n")),
    "Expect: 100-continue, the body never sent": case(post(b"Content-Length: 2\r\nExpect: 100-continue\r\n")),
    "an unknown expectation": case(post(b"Content-Length: 2\r\nExpect: 200-ok\r\n", b"{}")),
    "Expect: 100-continue on a create": case(publish(b"Expect: 100-continue\r\n", body=b"",
                                                          length=str(len(NOTIFICATION)).encode()), NOTIFICATION),
    # -- Upgrade ------------------------------------------------------------------------------------
    "Upgrade: h2c": case(req(headers=b"Host: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                     b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")),
    "Upgrade: websocket": case(req(headers=b"Host: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                           b"Sec-WebSocket-Version: 13\r\n"
                                           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")),
    "Upgrade without Connection: Upgrade": case(req(headers=b"Host: t\r\nUpgrade: h2c\r\n")),
    "Upgrade on a POST with a body": case(
        post(b"Content-Length: 2\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n", b"{}")),
    # -- sizes ----------------------------------------------------------------------------------------
    "1000 query fields": case(req(b"GET /api/v1/stats?" + QUERY_1000 + b" HTTP/1.1")),
    "1001 query fields": case(req(b"GET /api/v1/stats?" + QUERY_1000 + b"&f=1 HTTP/1.1")),
    "a URL just under --max-header-kb": case(req(b"GET " + UNDER_HEADER_LIMIT + b" HTTP/1.1")),
    "a URL just over --max-header-kb": case(req(b"GET " + OVER_HEADER_LIMIT + b" HTTP/1.1")),
    "a URL over the header buffer": case(req(b"GET " + OVER_HEADER_BUFFER + b" HTTP/1.1")),
    "headers over the header buffer": case(req(headers=b"Host: t\r\n" + b"X-Pad: %s\r\n" % (b"p" * 100) * 700)),
    # -- methods ---------------------------------------------------------------------------------------
    "PUT to a route without it": case(req(b"PUT /health HTTP/1.1", b"Host: t\r\nContent-Length: 2\r\n", b"{}")),
    "DELETE to a route without it": case(req(b"DELETE /api/v1/stats HTTP/1.1")),
    "PATCH to a route without it": case(req(b"PATCH /health HTTP/1.1", b"Host: t\r\nContent-Length: 2\r\n", b"{}")),
    "TRACE": case(req(b"TRACE / HTTP/1.1")),
    "HEAD of /health": case(req(b"HEAD /health HTTP/1.1"), head=True),
    "HEAD of a static page": case(req(b"HEAD / HTTP/1.1"), head=True),
    "HEAD of the OpenAPI document": case(req(b"HEAD /api/v1/openapi.json HTTP/1.1"), head=True),
    "HEAD without Host": case(req(b"HEAD /health HTTP/1.1", b""), head=True),
    "HEAD with a malformed header": case(req(b"HEAD /health HTTP/1.1", b"Host: t\r\nBad Header\r\n"), head=True),
    "HEAD with a chunked body": case(req(b"HEAD / HTTP/1.1", b"Host: t\r\nTransfer-Encoding: chunked\r\n",
                                         b"2\r\nab\r\n0\r\n\r\n"), head=True),
    # -- the usual shapes --------------------------------------------------------------------------------
    "a usual create": case(publish()),
    "a create with a bad token": case(publish().replace(TOKEN, b"not-a-token")),
    "a create whose body is shorter than its Content-Length": case(publish(length=b"100")),
    "a create with Content-Length and chunked": case(publish(b"Transfer-Encoding: chunked\r\n")),
    "a create with a chunked body (to the handler)": case(
        publish(b"Transfer-Encoding: chunked\r\n", body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(NOTIFICATION), NOTIFICATION),
                length=b"")),
    "a stream open with a bad token": case(req(b"GET " + LANE + b"/stream HTTP/1.1",
                                                b"Host: t\r\nAuthorization: Bearer not-a-token\r\n")),
}

#: Cases that differ, by name: ``(ours, Tornado's, why)``, each outcome as
#: :func:`exchange` writes it.
DIFFERENCES: dict[str, tuple[str, str, str]] = {
    # -- what llhttp refuses and Tornado lets through --------------------------------------
    "HTTP/1.2 request line": (
        "4xx, closed", "2xx, closed",
        "stricter here, because llhttp knows HTTP/1.0 and 1.1 only; Tornado serves any HTTP/1.x"),
    "bare LF line endings": (
        "4xx, closed", "2xx, open",
        "stricter here, because RFC 9112 (2.2) only allows a bare LF and llhttp refuses it as a smuggling "
        "risk; Tornado accepts it until 6.7"),
    "bare LF ending the header block": (
        "4xx, closed", "2xx, open",
        "stricter here, because RFC 9112 (2.2) only allows a bare LF and llhttp refuses it as a smuggling "
        "risk; Tornado accepts it until 6.7"),
    "two equal Content-Lengths": (
        "4xx, closed", "4xx, open",
        "stricter here, because llhttp refuses any repeated Content-Length (RFC 9112, 6.3, lets a "
        "server refuse or merge equal ones); Tornado merges them"),
    "a Content-Length list of equal values": (
        "4xx, closed", "4xx, open",
        "stricter here, because llhttp refuses any repeated Content-Length (RFC 9112, 6.3, lets a "
        "server refuse or merge equal ones); Tornado merges them"),
    "Connection: keep-alive, close": (
        "2xx, closed", "2xx, open",
        "stricter here, because the list names the close option (RFC 9110, 7.6.1), which llhttp honours; "
        "Tornado compares the whole value with 'close'"),
    "Upgrade: h2c": (
        "2xx, closed", "2xx, open",
        "stricter here, because llhttp stops at an upgrade request (what follows would be another "
        "protocol's bytes) and nothing here switches: it is answered as plain HTTP, then closed"),
    "Upgrade: websocket": (
        "2xx, closed", "2xx, open",
        "stricter here, because llhttp stops at an upgrade request (what follows would be another "
        "protocol's bytes) and nothing here switches: it is answered as plain HTTP, then closed"),
    "Upgrade on a POST with a body": (
        "4xx, closed", "4xx, open",
        "stricter here, because llhttp stops at an upgrade request (what follows would be another "
        "protocol's bytes) and nothing here switches: it is answered as plain HTTP, then closed"),
    # -- answered here, dropped silently by Tornado --------------------------------------------
    "TLS handshake bytes": (
        "4xx, closed", "none, closed",
        "differs, because llhttp sees at the first byte that this is not HTTP and it is answered 400 at "
        "once; Tornado waits for a blank line until its idle deadline"),
    "a URL over the header buffer": (
        "4xx, closed", "none, closed",
        "differs, because a head over the buffer is answered 431 before the close; Tornado closes "
        "without an answer"),
    "headers over the header buffer": (
        "4xx, closed", "none, closed",
        "differs, because a head over the buffer is answered 431 before the close; Tornado closes "
        "without an answer"),
    # -- what RFC 9112 allows and Tornado does not implement -------------------------------------
    "two spaces before the target": (
        "2xx, open", "4xx, closed",
        "differs, because llhttp reads the request line on whitespace-delimited words, as RFC 9112 (3) "
        "allows; no framing depends on it"),
    "empty lines before the request": (
        "2xx, open", "4xx, closed",
        "differs, because RFC 9112 (2.2) asks a server to ignore empty lines before a request; Tornado "
        "takes them for an empty head"),
    "chunk extension": (
        "4xx, open", "4xx, closed",
        "differs, because RFC 9112 (7.1.1) defines chunk extensions and llhttp parses them strictly "
        "(a control character is refused); Tornado refuses any"),
    "chunk extension without a value": (
        "4xx, open", "4xx, closed",
        "differs, because RFC 9112 (7.1.1) defines chunk extensions and llhttp parses them strictly "
        "(a control character is refused); Tornado refuses any"),
    "trailer fields": (
        "4xx, open", "4xx, closed",
        "differs, because RFC 9112 (7.1.2) defines trailer fields and llhttp parses them (nothing here "
        "reads them); Tornado refuses any"),
    # -- a request answered before its (empty) body was read -------------------------------------
    "HTTP/1.0 keep-alive, a body without a length": (
        "4xx, open", "4xx, closed",
        "differs, because a request without Content-Length or chunked has no body (RFC 9112, 6.3), so "
        "the connection is in step; Tornado keeps HTTP/1.0 only for GET, HEAD or a framed body"),
    "absolute-form target": (
        "4xx, open", "4xx, closed",
        "differs, because llhttp has read the whole request (no body) when the 404 comes; Tornado "
        "closes after any answer given before it read the body, even an empty one"),
    "absolute-form target naming another host": (
        "4xx, open", "4xx, closed",
        "differs, because llhttp has read the whole request (no body) when the 404 comes; Tornado "
        "closes after any answer given before it read the body, even an empty one"),
    "OPTIONS *": (
        "4xx, open", "4xx, closed",
        "differs, because llhttp has read the whole request (no body) when the 404 comes; Tornado "
        "closes after any answer given before it read the body, even an empty one"),
    "a fragment in the target": (
        "4xx, open", "4xx, closed",
        "differs, because llhttp has read the whole request (no body) when the 404 comes; Tornado "
        "closes after any answer given before it read the body, even an empty one"),
    "a percent-encoded path": (
        "4xx, open", "4xx, closed",
        "differs, because llhttp has read the whole request (no body) when the 404 comes; Tornado "
        "closes after any answer given before it read the body, even an empty one"),
    "an unknown route": (
        "4xx, open", "4xx, closed",
        "differs, because llhttp has read the whole request (no body) when the 404 comes; Tornado "
        "closes after any answer given before it read the body, even an empty one"),
    "TRACE": (
        "4xx, open", "4xx, closed",
        "differs, because llhttp has read the whole request (no body) when the 405 comes; Tornado "
        "closes after any answer given before it read the body, even an empty one"),
}


async def exchange(port: int, entry: Case, token: bytes) -> str:
    """What a server does with ``entry``: its answers' status classes, then ``open`` or ``closed``.

    ``hang`` marks a response that did not come within :data:`READ_TIMEOUT`
    (nor the end of the connection), ``malformed`` one that was not a
    complete HTTP/1.1 response.
    """
    reader, writer = await open_raw("127.0.0.1", port)
    classes: list[str] = []
    try:
        ended = not await send_pieces(writer, [piece.replace(TOKEN, token) for piece in entry.pieces], PIECE_GAP)
        finals = 0
        while finals < entry.answers:
            response = await asyncio.wait_for(read_response(reader, entry.head), READ_TIMEOUT)
            if response is None:
                ended = True
                break
            if response.status < 200:
                continue
            classes.append(response.status_class)
            finals += 1
            if response.until_close:
                ended = True
                break
        if not ended:
            ended = not await send_pieces(writer, [PROBE], 0)
        after: list[str] = []
        while not ended:
            response = await asyncio.wait_for(read_response(reader), READ_TIMEOUT)
            if response is None or response.until_close:
                ended = True
            if response is not None and response.status >= 200:
                after.append(response.status_class)
        usable = bool(after) and after[-1] in ("2xx", "5xx")  # /health: 200, or 503 if its check is slow
        classes += after[:-1] if usable else after
        return f"{' '.join(classes) or 'none'}, {'open' if usable else 'closed'}"
    except TimeoutError:
        return " ".join([*classes, "hang"])
    except Malformed as exc:
        return " ".join([*classes, f"malformed ({exc})"])
    finally:
        await close_writer(writer)


class TornadoServer:
    """Tornado's own ``HTTPServer`` serving a ``NotifyApp``, on a loop in a thread of its own.

    The app is built as ``make_server`` builds one; the server gets the
    limits ``server.make_http_server`` gives ours (read off the server it
    builds).  A thread of its own, so that what this server logs can be told
    from what ours logs (:meth:`leave_logs_out`).

    :param settings: the app's ``Config`` fields.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tornado-httpserver", daemon=True)
        self._app: Any = None
        self._server: HTTPServer | None = None

    def start(self) -> None:
        """Start the thread, the app and the server (blocks until it listens)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    async def _start(self) -> None:
        # Plain Tornado: its HTTPServer and RequestHandlers (the lane off).
        self._app = make_app(Config(**self.settings), lanes=False)
        await self._app.start()
        ours = make_http_server(self._app)
        ours.stop()
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._server = HTTPServer(self._app, max_header_size=ours.max_header_size, max_body_size=ours.max_body_size,
                                  idle_connection_timeout=ours.idle_timeout, body_timeout=ours.body_timeout)
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]

    def leave_logs_out(self, caplog: pytest.LogCaptureFixture) -> None:
        """Keep what this server's thread logs out of ``caplog`` (for ``no_error_logged``)."""
        ident = self._thread.ident
        caplog.handler.addFilter(lambda record: record.thread != ident)

    def stop(self) -> None:
        """Stop the server and the app, then the thread."""
        if self._thread.is_alive():
            if self._server is not None:
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.stop()
        await self._app.stop()
        await self._server.close_all_connections()


SETTINGS = {"jwt_secret": SECRET, "keepalive_interval": 30.0, "idle_timeout": SHORT, "body_timeout": SHORT}


@pytest.fixture
def tornado_server(new_db_url) -> TornadoServer:
    """Tornado's ``HTTPServer`` serving a ``NotifyApp`` like ours (short deadlines), stopped after the test."""
    server = TornadoServer({**SETTINGS, "db_url": new_db_url("tornado")})
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
async def test_every_case_ends_as_on_tornado_or_differs_for_a_listed_reason(make_server, tornado_server, caplog):
    tornado_server.leave_logs_out(caplog)
    ours = await make_server(**{key: value for key, value in SETTINGS.items() if key != "jwt_secret"})
    token = ours.token("alice").encode()
    names = list(CORPUS)
    outcomes = await asyncio.gather(*(exchange(port, CORPUS[name], token)
                                      for port in (ours.port, tornado_server.port) for name in names))
    ours_by_name = dict(zip(names, outcomes[:len(names)], strict=True))
    tornado_by_name = dict(zip(names, outcomes[len(names):], strict=True))
    problems = []
    for name in names:
        mine, theirs = ours_by_name[name], tornado_by_name[name]
        if "5xx" in mine or "hang" in mine or "malformed" in mine:
            problems.append(f"{name}: ours {mine!r} (never a 5xx, a hang or a broken answer)")
        listed = DIFFERENCES.get(name)
        if listed is None and mine != theirs:
            problems.append(f"{name}: ours {mine!r}, Tornado {theirs!r}, and no reason listed")
        elif listed is not None and (mine, theirs) != listed[:2]:
            problems.append(f"{name}: listed as ours {listed[0]!r}, Tornado {listed[1]!r}; now ours {mine!r}, "
                            f"Tornado {theirs!r}")
    table = "\n".join(f"  {name}: ours {ours_by_name[name]!r}, Tornado {tornado_by_name[name]!r}" for name in names)
    logging.getLogger(__name__).info("outcomes:\n%s", table)
    assert not problems, "\n".join(problems) + "\n\nall outcomes:\n" + table


def test_every_listed_difference_is_a_case_and_says_why():
    for name, (_ours, _tornado, why) in DIFFERENCES.items():
        assert name in CORPUS, name
        assert why.startswith(("stricter here, because ", "differs, because ")), (name, why)
    assert len(CORPUS) >= 60
