"""The Tornado door: each route of :mod:`handlers.routes` as a ``RequestHandler``.

A :class:`RouteHandler` is a thin adapter: it builds the request's
:class:`~handlers.call.Call` from Tornado's request, calls the route's
function, and writes the :class:`~handlers.call.Answer` (or opens the
stream).  Errors leave through :meth:`BaseHandler.write_error` as the
contract's ``{"error": {"code", "message"}}`` body.  This door serves what
the lane (:mod:`handlers.lane`) leaves to the ``Application``: the demo
page's files, unknown paths, and every route when the lane is off (as under
Tornado's own ``HTTPServer``, or in the tests that run the API through both
doors).
"""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado import httputil
from tornado.iostream import StreamClosedError

from core.domain.errors import DomainError
from core.runtime.config import Config
from handlers.call import Answer, Call, Deps, StreamOpening
from handlers.http import (
    NO_CONNECTION_LIMIT,
    BodyLimit,
    decode_path_argument,
    error_answer,
    json_headers,
    log_failure,
)
from handlers.routes import Route, preflight
from handlers.stream import STREAM_HEADERS, chunked_output, hand_over, hello


def write_json_error(handler: tornado.web.RequestHandler, status_code: int, **kwargs: Any) -> None:
    """``handler``'s answer to a domain error (or Tornado's own): the contract's error body.

    Takes ``write_error``'s arguments; for every handler of this application.
    """
    error = kwargs.get("exc_info", (None, None, None))[1]
    status, headers, body = error_answer(error, status_code, handler.request.method)
    handler.set_status(status)
    for name, value in headers.items():
        handler.set_header(name, value)
    handler.set_header("Content-Type", "application/json; charset=utf-8")
    handler.set_header("Cache-Control", "no-store")
    handler.finish(body)


@tornado.web.stream_request_body
class LimitedRequestHandler(tornado.web.RequestHandler):
    """Refuses a request over the header or body limit with a JSON error (:class:`~handlers.http.BodyLimit`).

    The body is streamed in (``stream_request_body``) so that its size is
    counted as it arrives, and the server never holds more than the limit.
    """

    _limit: BodyLimit | None = None

    def set_limits(self, config: Config | None) -> None:
        """Take the limits from ``config`` (call from ``initialize``; None: the defaults' sizes)."""
        defaults = Config()
        config = config or defaults
        self._limit = BodyLimit(config.max_header_kb * 1024, config.max_body_kb * 1024)

    @property
    def body_limit(self) -> BodyLimit:
        """This request's limits and the body kept so far."""
        if self._limit is None:
            self.set_limits(None)
        assert self._limit is not None
        return self._limit

    def check_limits(self) -> None:
        """Refuse oversized headers, or a body announced over the limit (431, 413)."""
        request = self.request
        set_max_body_size = getattr(request.connection, "set_max_body_size", None)
        if set_max_body_size is not None:
            set_max_body_size(NO_CONNECTION_LIMIT)
        self.body_limit.check_head(
            httputil.RequestStartLine(request.method or "GET", request.uri or "/", request.version), request.headers
        )

    _answered = False

    def on_finish(self) -> None:
        """The answer is complete: what else of the body arrives is dropped."""
        self._answered = True

    def data_received(self, chunk: bytes) -> None:
        """Keep the body up to the limit; past it, answer 413 at once."""
        if self._answered:
            return
        try:
            self.body_limit.take(chunk)
        except DomainError as error:
            self.send_error(error.status, exc_info=(type(error), error, None))

    def request_body(self) -> bytes:
        """The whole request body (``self.request.body`` stays empty when streaming)."""
        return self.body_limit.body()

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """A path piece (Tornado decodes them here), as every door decodes it."""
        return decode_path_argument(value)


class BaseHandler(LimitedRequestHandler):
    """A handler of this application: JSON defaults, CORS, and the one error format."""

    deps: Deps

    def use_deps(self, deps: Deps) -> None:
        """Receive the application's dependencies (each subclass's ``initialize`` calls this).

        Not ``initialize`` itself: each subclass's takes what its route
        gives it, which Tornado passes as keyword arguments.
        """
        self.deps = deps
        self.set_limits(deps.config)
        self._set_cors_headers()

    def prepare(self) -> None:
        """Check the request's size before its body is read."""
        self.check_limits()

    def clear(self) -> None:
        """Reset the response: JSON, not cached, not sniffed, no ``Server``.

        Tornado's own version formats the ``Date`` header through
        ``email.utils`` on every request: here it is formatted once a
        second.  The version of what runs here is nobody's business.
        """
        super().clear()
        for name in ("Server", "Content-Type", "Date"):
            self.clear_header(name)
        for name, value in json_headers().items():
            self.set_header(name, value)
        self.set_default_headers()

    def set_default_headers(self) -> None:
        """CORS headers if configured (:meth:`clear` sets the JSON defaults)."""
        # Also called (through clear()) before initialize() has run.
        if hasattr(self, "deps"):
            self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        for name, value in self.deps.cors.headers(self.request.headers.get("Origin")).items():
            self.set_header(name, value)

    def compute_etag(self) -> None:
        """No ``Etag``: answers are ``no-store``, and the lane sends none either."""
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Map a domain error (or Tornado's own) to the contract's error body."""
        write_json_error(self, status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Domain errors are answers, not failures (see :func:`~handlers.http.log_failure`)."""
        log_failure(self.request.method, self.request.path, (typ, value, tb))


class RouteHandler(BaseHandler):
    """One route of :mod:`handlers.routes`, served through Tornado."""

    _route: Route
    _device: Any = None

    def initialize(self, deps: Deps, route: Route) -> None:
        """The dependencies and the route this handler serves."""
        self.use_deps(deps)
        self._route = route

    async def get(self, *pieces: str) -> None:
        """Serve a GET."""
        await self._serve("GET", pieces)

    async def post(self, *pieces: str) -> None:
        """Serve a POST."""
        await self._serve("POST", pieces)

    async def patch(self, *pieces: str) -> None:
        """Serve a PATCH."""
        await self._serve("PATCH", pieces)

    async def delete(self, *pieces: str) -> None:
        """Serve a DELETE."""
        await self._serve("DELETE", pieces)

    def options(self, *pieces: str) -> None:
        """A CORS preflight (:func:`~handlers.routes.preflight`)."""
        self._write(preflight(self._call(), self._route))

    async def _serve(self, method: str, pieces: tuple[str, ...]) -> None:
        serve = self._route.methods.get(method)
        if serve is None:
            raise tornado.web.HTTPError(405)
        result = await serve(self._call(), *pieces)
        if isinstance(result, StreamOpening):
            await self._open_stream(result)
        else:
            self._write(result)

    def _call(self) -> Call:
        request = self.request
        return Call(self.deps, request.method or "GET", request.uri or "/", request.headers, self.request_body())

    def _write(self, answer: Answer) -> None:
        self.set_status(answer.status)
        for name, value in answer.headers.items():
            self.set_header(name, value)
        if answer.status == 204:
            self.finish()
        else:
            self.finish(answer.body)

    async def _open_stream(self, opening: StreamOpening) -> None:
        device = opening.device
        self._device = device
        for name, value in STREAM_HEADERS.items():
            self.set_header(name, value)
        self.write(hello(self.deps, device))
        try:
            await self.flush()
        except StreamClosedError:
            self.deps.manager.unsubscribe(device)
            return
        if device.ended:
            return
        # Take the connection over from the HTTP layer, as Tornado's own
        # WebSocket handler does: the headers and the first frames are on
        # the wire and nothing else will be written through Tornado, so this
        # handler and its request are freed while the stream stays open.
        chunked = chunked_output(self.request.connection)
        stream = self.detach()
        self._device = None  # the writer watches the connection from now on
        self.application.log_request(self)
        await hand_over(self.deps, device, opening.start, stream, chunked)

    def on_connection_close(self) -> None:
        """The client went away before its stream was taken over: forget the device."""
        device, self._device = self._device, None
        if device is not None:
            self.deps.manager.unsubscribe(device)
        super().on_connection_close()


class NotFoundHandler(BaseHandler):
    """Every unknown path: a JSON 404."""

    def initialize(self, deps: Deps) -> None:
        """Receive the application's dependencies."""
        self.use_deps(deps)

    def prepare(self) -> None:
        """Answer 404 whatever the method."""
        super().prepare()
        raise tornado.web.HTTPError(404, "no such resource: %s", self.request.path)
