"""The publish fast lane: ``POST .../notifications`` without a RequestHandler.

Creating a notification is the request a busy service serves most, and
Tornado's ``Application``/``RequestHandler`` machinery (routing, a handler
object, its header dicts, ``_execute``'s coroutine, ``flush``) costs more
CPU per request than everything the product does for it (measured with
``bench/bare_tornado.py``: 576 us per request through a RequestHandler,
225 us through a bare ``HTTPMessageDelegate``).  So, as Tornado's own
WebSocket support steps around the handler once its headers are out, this
module serves that one request as a bare ``HTTPMessageDelegate`` on
Tornado's HTTP/1.1 connection.

Only the ordinary shape of the request takes the lane: ``POST
/api/v1/users/{userId}/notifications`` with no query string, an
``Authorization`` header, ``Content-Type: application/json`` and a
``Content-Length`` within ``--max-body-kb``, headers within
``--max-header-kb``.  Anything else (a cookie credential, a chunked or
oversized body, a path that is not valid UTF-8 once decoded) is decided on
the headers alone, before a byte of body is read, and handed to the
``Application`` unchanged, so every unusual case keeps the one
implementation in :mod:`handlers.api` and :mod:`handlers.base`.  Once a
request is in the lane, it goes through the same steps, in the same order,
as ``NotificationsHandler.post`` (credential, rate limit, permission, body,
validation, store) and leaves with the same status, headers and body,
errors included (:func:`handlers.base.error_answer`);
``tests/test_fastlane.py`` compares the two.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import urllib.parse
from typing import Any

from tornado import httputil

from core.auth import require_creator
from core.validation import check_user_id, parse_json_body, validate_notification
from handlers.base import (
    Deps,
    InFlight,
    bearer_token,
    declared_length,
    error_answer,
    header_block_size,
    json_headers,
    log_access,
    log_failure,
    spend_publish,
)

#: The create route, matched on the raw (still percent-encoded) path, as
#: Tornado's router does.
PUBLISH_PATH = re.compile(r"/api/v1/users/([^/]+)/notifications\Z")

_REASONS = {status: httputil.responses.get(status, "Unknown") for status in range(100, 600)}


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


class FastPublish(httputil.HTTPMessageDelegate):
    """One ``POST .../notifications`` served straight on the connection.

    :param deps: the application's dependencies.
    :param connection: Tornado's HTTP/1.1 connection of the request.
    :param start_line: its request line.
    :param headers: its headers.
    :param user_id: the path's user id, decoded (:func:`fast_publish_user`).
    """

    __slots__ = ("_deps", "_connection", "_start_line", "_headers", "_user_id", "_chunks", "_started",
                 "_inflight", "_task")

    def __init__(self, deps: Deps, connection: httputil.HTTPConnection, start_line: httputil.RequestStartLine,
                 headers: httputil.HTTPHeaders, user_id: str) -> None:
        self._deps = deps
        self._connection = connection
        self._start_line = start_line
        self._headers = headers
        self._user_id = user_id
        self._chunks: list[bytes] = []
        self._started = time.time()
        # Counted from the headers on, as a handler's prepare() does, so
        # that shutdown waits for it.
        self._inflight: InFlight | None = deps.inflight
        deps.inflight.count += 1
        self._task: asyncio.Task[None] | None = None

    def data_received(self, chunk: bytes) -> None:
        """A piece of the body (at most ``Content-Length``, already checked)."""
        self._chunks.append(chunk)

    def finish(self) -> None:
        """The body is in: serve the request."""
        # A task, as Tornado runs a coroutine handler: the connection waits
        # for the answer before it reads the next request.
        self._task = asyncio.ensure_future(self._serve())

    def on_connection_close(self) -> None:
        """The client left before its body was in: nothing will answer it."""
        self._stop_counting()

    def _stop_counting(self) -> None:
        if self._inflight is not None:
            self._inflight.count -= 1
            self._inflight = None

    async def _serve(self) -> None:
        deps = self._deps
        user_id = self._user_id
        headers = self._headers
        try:
            # The order of NotificationsHandler.post: who, how often, may
            # they, what.
            principal = deps.tokens.verify(bearer_token(headers["Authorization"]))
            spend_publish(deps.publish_limiter, principal)
            require_creator(principal, check_user_id(user_id))
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            fields = validate_notification(parse_json_body(body))
            origin = headers.get("X-Connection-Id") or None
            notification = await deps.service.create_notification(principal, user_id, fields, origin)
        except Exception:
            exc_info = sys.exc_info()
            log_failure(self._start_line.method, self._start_line.path, exc_info)
            status, extra, text = error_answer(exc_info[1], 500, self._start_line.method)
            self._answer(status, extra, text)
            return
        self._answer(201, {"Location": "/api/v1/users/{}/notifications/{}".format(
            urllib.parse.quote(user_id, safe=""), notification["notificationId"])}, notification.text)

    def _answer(self, status: int, extra: dict[str, str], text: str) -> None:
        response = json_headers()
        response.update(self._deps.cors.headers(self._headers.get("Origin")))
        response.update(extra)
        body = text.encode("utf-8")
        response["Content-Length"] = str(len(body))
        self._connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", status, _REASONS[status]), httputil.HTTPHeaders(response), body)
        self._connection.finish()
        self._stop_counting()
        log_access(status, self._start_line.method, self._start_line.path, time.time() - self._started)


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
