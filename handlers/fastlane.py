"""The fast lanes: the usual create and stream open, without a RequestHandler.

Creating a notification and opening a stream are the requests a busy
service serves most, and Tornado's ``Application``/``RequestHandler``
machinery (routing, a handler object, its header dicts, ``_execute``'s
coroutine, ``flush``) costs about 200 us of CPU per request on this VM, more
than the product's own work for a create (``bench/calibrate.sh``: 282 us per
request for a RequestHandler on :mod:`core.transport.http1`, 103 us for a bare
``HTTPMessageDelegate``).  So, as Tornado's own WebSocket support steps
around the handler once its headers are out, these two are served as bare
``HTTPMessageDelegate`` objects on the connection, in their usual shapes:

- ``POST /api/v1/users/{userId}/notifications`` with no query string, an
  ``Authorization`` header, ``Content-Type: application/json`` and a
  ``Content-Length`` within ``--max-body-kb`` (:func:`fast_publish_user`);
- ``GET .../notifications/stream`` with an ``Authorization`` header, or a
  plain ``?token=`` and no cookie, at most ``lastEventId`` besides, no body
  (:func:`fast_stream_request`);

headers within ``--max-header-kb`` in both.  Anything else (a cookie or a
ticket, a chunked or oversized body, a percent-encoded query, a path that
is not UTF-8 once decoded, any other route) is decided on the headers
alone, before a byte of body is read, and handed to the ``Application``
unchanged, so every unusual case keeps the one implementation in
:mod:`handlers.api`, :mod:`handlers.stream` and :mod:`handlers.base`.  A
request in a lane goes through the same steps, in the same order, as
``NotificationsHandler.post`` or ``StreamHandler.get`` (the stream's steps
are shared functions of :mod:`handlers.stream`), and leaves with the same
status, headers and body, errors included
(:func:`handlers.base.error_answer`); ``tests/test_http1.py`` compares
them.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import urllib.parse
from typing import Any

from tornado import httputil
from tornado.iostream import StreamClosedError

from core.domain.auth import require_creator
from core.transport.http1 import REASONS
from core.streams.manager import Device
from core.domain.validation import check_user_id, parse_json_body, validate_notification
from handlers.base import (
    Deps,
    bearer_token,
    declared_length,
    error_answer,
    header_block_size,
    json_headers,
    log_access,
    log_failure,
    spend_budget,
)
from handlers.stream import STREAM_HEADERS, hand_over, hello, plan_stream

#: The create route, matched on the raw (still percent-encoded) path, as
#: Tornado's router does.
PUBLISH_PATH = re.compile(r"/api/v1/users/([^/]+)/notifications\Z")
STREAM_PATH = re.compile(r"/api/v1/users/([^/]+)/notifications/stream\Z")



def fast_publish_user(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders, max_header_bytes: int,
                      max_body_bytes: int) -> str | None:
    """The path's user id when this request may take the lane, else None.

    Decided on the request line and headers only (nothing is read or spent):
    see the module's docstring for the shape that qualifies.
    """
    if start_line.method != "POST":
        return None
    match = PUBLISH_PATH.match(start_line.path)
    if match is None or "Authorization" not in headers or "Transfer-Encoding" in headers:
        return None
    length = declared_length(headers)
    if length is None or length > max_body_bytes:
        return None
    if headers.get("Content-Type", "").split(";", 1)[0].strip().lower() != "application/json":
        return None
    if header_block_size(start_line.method, start_line.path, start_line.version, headers) > max_header_bytes:
        return None
    try:
        return urllib.parse.unquote_to_bytes(match.group(1)).decode("utf-8")
    except UnicodeDecodeError:
        return None


def fast_stream_request(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                        max_header_bytes: int) -> tuple[str, str | None, str | None] | None:
    """``(user id, ?token=, Last-Event-ID)`` when this stream request may take the lane, else None.

    The usual shapes only: an ``Authorization`` header, or (no header, no
    cookie) a ``?token=``, with at most ``token`` and ``lastEventId`` in a
    query that needs no decoding; no body.  A ticket, a cookie or anything
    else goes to the handler.
    """
    if start_line.method != "GET":
        return None
    path, _, query = start_line.path.partition("?")
    match = STREAM_PATH.match(path)
    if match is None or "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0":
        return None
    token = last = None
    if query:
        if "%" in query or "+" in query:
            return None
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            if name == "token" and token is None:
                token = value.strip()
            elif name == "lastEventId" and last is None:
                last = value.strip()
            else:
                return None
    if "Authorization" not in headers and (not token or "Cookie" in headers):
        return None
    if header_block_size(start_line.method, start_line.path, start_line.version, headers) > max_header_bytes:
        return None
    try:
        user_id = urllib.parse.unquote_to_bytes(match.group(1)).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return user_id, token, headers.get("Last-Event-ID") or last or None


class _Lane(httputil.HTTPMessageDelegate):
    """A request served straight on its connection (see the module's docstring).

    A lane is one of the subclasses, which serve their request in their
    coroutine ``_serve`` (started by :meth:`finish`).

    :param deps: the application's dependencies.
    :param connection: the request's HTTP/1.1 connection.
    :param start_line: its request line.
    :param headers: its headers.
    :param user_id: the path's user id, decoded.
    """

    def __init__(self, deps: Deps, connection: Any, start_line: httputil.RequestStartLine,
                 headers: httputil.HTTPHeaders, user_id: str) -> None:
        self._deps = deps
        self._connection = connection
        self._start_line = start_line
        self._headers = headers
        self._user_id = user_id
        self._started = time.time()
        self._task: asyncio.Task[None] | None = None

    def finish(self) -> None:
        """The request is in: serve it."""
        # A task, as Tornado runs a coroutine handler: the connection waits
        # for the answer before it reads the next request.
        self._task = asyncio.ensure_future(self._serve())

    def on_connection_close(self) -> None:
        """The client left before its request was in: nothing will answer it."""

    def _log(self, status: int) -> None:
        log_access(status, self._start_line.method, self._start_line.path.split("?", 1)[0], time.time() - self._started)

    def _fail(self) -> None:
        """Answer the exception being handled as the handlers would."""
        exc_info = sys.exc_info()
        path = self._start_line.path.split("?", 1)[0]
        log_failure(self._start_line.method, path, exc_info)
        status, extra, text = error_answer(exc_info[1], 500, self._start_line.method)
        self._answer(status, extra, text)

    def _response_headers(self) -> dict[str, str]:
        response = json_headers()
        response.update(self._deps.cors.headers(self._headers.get("Origin")))
        return response

    def _answer(self, status: int, extra: dict[str, str], text: str) -> None:
        response = self._response_headers()
        response.update(extra)
        body = text.encode("utf-8")
        response["Content-Length"] = str(len(body))
        self._connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", status, REASONS[status]), httputil.HTTPHeaders(response), body)
        self._connection.finish()
        self._log(status)


class FastPublish(_Lane):
    """One ``POST .../notifications`` (:func:`fast_publish_user`), as ``NotificationsHandler.post``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        """A piece of the body (at most ``Content-Length``, already checked)."""
        self._chunks.append(chunk)

    async def _serve(self) -> None:
        deps = self._deps
        user_id = self._user_id
        headers = self._headers
        try:
            # The order of NotificationsHandler.post: who, how often, may
            # they, what.
            principal = deps.tokens.verify(bearer_token(headers["Authorization"]))
            spend_budget(deps.publish_limiter, principal, "publishes")
            require_creator(principal, check_user_id(user_id))
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            fields = validate_notification(parse_json_body(body))
            origin = headers.get("X-Connection-Id") or None
            notification = await deps.service.create_notification(principal, user_id, fields, origin)
        except Exception:
            self._fail()
            return
        self._answer(201, {"Location": "/api/v1/users/{}/notifications/{}".format(
            urllib.parse.quote(user_id, safe=""), notification["notificationId"])}, notification.text)


class FastStream(_Lane):
    """One ``GET .../notifications/stream`` (:func:`fast_stream_user`), as ``StreamHandler.get``.

    :param token: the ``?token=`` credential, when there is no
        ``Authorization`` header.
    :param last_event_id: ``Last-Event-ID``, or else ``?lastEventId=``.
    """

    def __init__(self, *args: Any, token: str | None, last_event_id: str | None) -> None:
        super().__init__(*args)
        self._token = token
        self._last_event_id = last_event_id
        self._device: Device | None = None

    def data_received(self, chunk: bytes) -> None:
        """No body comes with a qualifying request."""

    async def _serve(self) -> None:
        deps = self._deps
        connection = self._connection
        authorization = self._headers.get("Authorization")
        try:
            token = bearer_token(authorization) if authorization is not None else self._token
            principal = deps.tokens.verify(token)  # type: ignore[arg-type]
            device, start = await plan_stream(deps, principal, self._user_id, self._last_event_id)
        except Exception:
            self._fail()
            return
        self._device = device
        connection.set_close_callback(self._left)
        response = self._response_headers()
        response.update(STREAM_HEADERS)
        try:
            await connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", 200, "OK"),
                                           httputil.HTTPHeaders(response), hello(deps, device))
        except StreamClosedError:
            self._left()
            return
        if self._device is None:
            return  # the client left meanwhile
        if device.ended:
            # Ended already (shutdown, expiry): finish the answer as a
            # handler returning would.
            connection.set_close_callback(None)
            connection.finish()
            self._log(200)
            return
        chunked = connection.chunked_output
        sock = connection.detach()
        self._device = None
        self._log(200)
        await hand_over(deps, device, start, sock, chunked)

    def _left(self) -> None:
        """The client went away before the stream was handed over."""
        device, self._device = self._device, None
        if device is not None:
            self._deps.manager.unsubscribe(device)


class LaneSorter(httputil.HTTPMessageDelegate):
    """Sends each request, on its headers, to the fast lane or to the Application.

    :param app: the ``tornado.web.Application`` serving everything else.
    :param deps: its dependencies.
    :param server_conn: the connection (for the Application's routing).
    :param connection: the request's HTTP/1.1 connection.
    """

    __slots__ = ("_app", "_deps", "_server_conn", "_connection", "_inner")

    def __init__(self, app: Any, deps: Deps, server_conn: object, connection: httputil.HTTPConnection) -> None:
        self._app = app
        self._deps = deps
        self._server_conn = server_conn
        self._connection = connection
        self._inner: httputil.HTTPMessageDelegate | None = None

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        """Choose the lane before any of the body is read."""
        config = self._deps.config
        if start_line.method == "GET":
            stream = fast_stream_request(start_line, headers, config.max_header_kb * 1024)
            if stream is not None:
                user_id, token, last_event_id = stream
                self._inner = FastStream(self._deps, self._connection, start_line, headers, user_id,
                                         token=token, last_event_id=last_event_id)
                return None
        else:
            user_id = fast_publish_user(start_line, headers, config.max_header_kb * 1024, config.max_body_kb * 1024)
            if user_id is not None:
                self._inner = FastPublish(self._deps, self._connection, start_line, headers, user_id)
                return None
        self._inner = self._app.route_request(self._server_conn, self._connection)
        return self._inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        """A piece of the body, to whoever serves the request."""
        assert self._inner is not None
        return self._inner.data_received(chunk)

    def finish(self) -> None:
        """The request is read."""
        assert self._inner is not None
        self._inner.finish()

    def on_connection_close(self) -> None:
        """The connection closed before the request was read."""
        if self._inner is not None:
            self._inner.on_connection_close()
