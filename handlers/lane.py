"""The lane: the routes of :mod:`handlers.routes`, served without a ``RequestHandler``.

Tornado's ``Application``/``RequestHandler`` machinery (routing, a handler
object, its header dicts, ``_execute``'s coroutine, ``flush``) costs more
CPU per request than the product's own work for a create.  So, as
Tornado's own WebSocket support steps around the handler once its headers
are out, a request for one of the routes is served by a bare
``HTTPMessageDelegate`` on its connection (:class:`Lane`): the same route
table, the same :class:`~handlers.call.Call` and route function, the same
limits (:class:`~handlers.http.BodyLimit`), the same answers, errors and
log lines as the Tornado door (:mod:`handlers.tornado_door`), in the same
order (Tornado's ``RequestHandler._execute``: the method, the path's
pieces, the size limits, the body, then the route).  Only what is not a
route (the demo's files, unknown paths) goes to the ``Application``.

The test suite runs the API through both doors (the ``door`` fixture).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import tornado.web
from tornado import httputil
from tornado.iostream import StreamClosedError

from core.domain.errors import BadRequest, DomainError
from core.transport.http1 import REASONS, Exchange, head_problem
from handlers import routes
from handlers.call import Answer, Call, Deps, StreamOpening, parse_query
from handlers.http import (
    NO_CONNECTION_LIMIT,
    BodyLimit,
    decode_path_argument,
    error_answer,
    json_headers,
    log_access,
    log_failure,
)
from handlers.stream import STREAM_HEADERS, chunked_output, hand_over, hello

#: The methods Tornado's ``RequestHandler`` knows; any other is a 405
#: before anything else is looked at.
SUPPORTED_METHODS = frozenset(tornado.web.RequestHandler.SUPPORTED_METHODS)


class Lane(httputil.HTTPMessageDelegate):
    """One request for a route, served straight on its connection.

    :param deps: the application's dependencies.
    :param connection: the request's HTTP connection.
    :param start_line: its request line.
    :param headers: its headers.
    :param route: the route its path matched.
    :param pieces: the path's pieces, still percent-encoded.
    """

    def __init__(
        self,
        deps: Deps,
        connection: Any,
        start_line: httputil.RequestStartLine,
        headers: httputil.HTTPHeaders,
        route: routes.Route,
        pieces: tuple[str, ...],
    ) -> None:
        self._deps = deps
        self._connection = connection
        self._start_line = start_line
        self._headers = headers
        self._route = route
        self._raw_pieces = pieces
        self._pieces: list[str] = []
        self._limit = BodyLimit(deps.config.max_header_kb * 1024, deps.config.max_body_kb * 1024)
        self._started = time.time()
        self._answered = False
        self._device: Any = None
        self._task: asyncio.Task[None] | None = None

    # -- HTTPMessageDelegate ---------------------------------------------------------

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> None:
        """Refuse what can be refused before the body: the method, the path, the sizes."""
        # A server's delegate: the start line is a request's.
        assert isinstance(start_line, httputil.RequestStartLine)
        self._connection.set_max_body_size(NO_CONNECTION_LIMIT)
        try:
            if start_line.method not in SUPPORTED_METHODS:
                raise tornado.web.HTTPError(405)
            self._pieces = [decode_path_argument(piece) for piece in self._raw_pieces]
            self._limit.check_head(start_line, headers)
        except Exception:
            self._fail()

    def data_received(self, chunk: bytes) -> None:
        """A piece of the body, kept within the limit (413 at once past it)."""
        if self._answered:
            return
        try:
            self._limit.take(chunk)
        except DomainError:
            self._fail()

    def finish(self) -> None:
        """The request is in: serve it."""
        if not self._answered:
            # A task, as Tornado runs a coroutine handler: the connection
            # waits for the answer before it reads the next request.
            self._task = asyncio.ensure_future(self._serve())

    def on_connection_close(self) -> None:
        """The client left before its request was in, or before its stream was handed over."""
        self._left()

    # -- serving -------------------------------------------------------------------------

    async def _serve(self) -> None:
        start_line = self._start_line
        method = start_line.method
        call = Call(self._deps, method, start_line.path, self._headers, self._limit.body())
        try:
            serve = self._route.methods.get(method)
            if serve is not None:
                result = await serve(call, *self._pieces)
            elif method == "OPTIONS":
                result = routes.preflight(call, self._route)
            else:
                raise tornado.web.HTTPError(405)
        except Exception:
            self._fail()
            return
        if isinstance(result, StreamOpening):
            await self._open_stream(result)
        else:
            self._write(result)

    def _fail(self) -> None:
        """Answer the exception being handled, as the Tornado door would."""
        exc_info = sys.exc_info()
        method, path = self._start_line.method, self._path()
        log_failure(method, path, exc_info)
        status, extra, text = error_answer(exc_info[1], 500, method)
        self._write(Answer(status, text.encode("utf-8"), extra))

    def _path(self) -> str:
        return self._start_line.path.split("?", 1)[0]

    def _response_headers(self) -> dict[str, str]:
        response = json_headers()
        response.update(self._deps.cors.headers(self._headers.get("Origin")))
        return response

    def _write(self, answer: Answer) -> None:
        if self._answered:
            return
        self._answered = True
        response = self._response_headers()
        response.update(answer.headers)
        status = answer.status
        body = answer.body
        if status == 204:
            # As Tornado: no body, so nothing describes one.
            response.pop("Content-Type", None)
            body = b""
        else:
            response["Content-Length"] = str(len(body))
            if self._start_line.method == "HEAD":
                body = b""  # as Tornado: the length of what a GET would get, no body
        self._connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", status, REASONS[status]),
            httputil.HTTPHeaders(response),
            body or None,
        )
        self._connection.finish()
        log_access(status, self._start_line.method, self._path(), time.time() - self._started)

    async def _open_stream(self, opening: StreamOpening) -> None:
        deps, connection, device = self._deps, self._connection, opening.device
        self._device = device
        self._answered = True
        connection.set_close_callback(self._left)
        response = self._response_headers()
        response.update(STREAM_HEADERS)
        try:
            await connection.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", 200, "OK"), httputil.HTTPHeaders(response), hello(deps, device)
            )
        except StreamClosedError:
            self._left()
            return
        if self._device is None:
            return  # the client left meanwhile
        log_access(200, self._start_line.method, self._path(), time.time() - self._started)
        if device.ended:
            # Ended already (shutdown, expiry): finish the answer, as a
            # handler returning would.
            self._device = None
            connection.set_close_callback(None)
            connection.finish()
            return
        chunked = chunked_output(connection)
        sock = connection.detach()
        self._device = None  # the writer watches the connection from now on
        await hand_over(deps, device, opening.start, sock, chunked)

    def _left(self) -> None:
        """The client went away before the stream was handed over."""
        device, self._device = self._device, None
        if device is not None:
            self._deps.manager.unsubscribe(device)


class LaneSorter(httputil.HTTPMessageDelegate):
    """Sends each request, on its headers, to a :class:`Lane` (a route) or to the ``Application``.

    :param app: the ``tornado.web.Application`` serving everything else.
    :param deps: its dependencies.
    :param server_conn: the connection (for the Application's routing).
    :param connection: the request's HTTP connection.
    """

    __slots__ = ("_app", "_deps", "_server_conn", "_connection", "_inner")

    def __init__(self, app: Any, deps: Deps, server_conn: object, connection: httputil.HTTPConnection) -> None:
        self._app = app
        self._deps = deps
        self._server_conn = server_conn
        self._connection = connection
        self._inner: httputil.HTTPMessageDelegate | None = None

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        """Choose the door before any of the body is read."""
        path, _, query = start_line.path.partition("?")
        found = routes.match(path)
        if found is None:
            self._inner = self._app.route_request(self._server_conn, self._connection)
            return self._inner.headers_received(start_line, headers)
        if query:
            try:
                parse_query(start_line.path)
            except BadRequest as exc:
                # Refused as Tornado's request builder refuses it: by the
                # connection, a 400 and a close.
                raise httputil.HTTPInputError(exc.message) from None
        if not isinstance(self._connection, Exchange):
            # Tornado's request builder's rules, kept on this door too when
            # another connection layer serves it (core.transport applies
            # them itself, before any door).
            problem = head_problem(start_line.version, headers)
            if problem is not None:
                raise httputil.HTTPInputError(problem)
        route, pieces = found
        self._inner = Lane(self._deps, self._connection, start_line, headers, route, pieces)
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
