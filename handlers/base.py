"""The base handler: dependencies, credentials, JSON in and out, errors.

Every error leaves through :meth:`BaseHandler.write_error` as the contract's
``{"error": {"code", "message"}}`` body; handlers raise domain errors and
never build error JSON themselves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from http import HTTPStatus
from typing import Any

import tornado.gen
import tornado.iostream
import tornado.web
from tornado import httputil

from core.auth import Principal, TokenService
from core.broker import Broker
from core.config import Config
from core.connections import ConnectionManager
from core.cors import CorsPolicy
from core.errors import (
    AuthError,
    DomainError,
    Forbidden,
    PayloadTooLarge,
    RequestHeadersTooLarge,
    TooManyRequests,
    UnsupportedMediaType,
)
from core.ratelimit import RateLimiter
from core.service import NotificationService
from core.validation import Encoded, parse_json_body

log = logging.getLogger("notify.http")
access_log = logging.getLogger("notify.access")

#: Codes for errors Tornado raises itself (unknown method, malformed request).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    431: "headers_too_large",
    429: "too_many_requests",
    503: "unavailable",
}


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The current time as an HTTP ``Date`` value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, httputil.format_timestamp(now))
    return _date_cache[1]


def json_headers() -> dict[str, str]:
    """The headers every JSON answer starts with: JSON, not cached, not sniffed."""
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Date": http_date(),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def error_answer(error: BaseException | None, status_code: int, method: str | None) -> tuple[int, dict[str, str], str]:
    """The contract's answer to an error: status, extra headers, JSON text.

    :param error: what was raised (a domain error, Tornado's HTTPError, or
        anything else, which is a 500), or None.
    :param status_code: the status Tornado chose, used when ``error`` is
        not one of ours.
    :param method: the request's method (named in a 405's message).
    """
    headers: dict[str, str] = {}
    if isinstance(error, DomainError):
        status = error.status
        headers.update(error.headers)
        code, message = error.code, error.message
        if status == 401 and "WWW-Authenticate" not in error.headers:
            # RFC 9110: every 401 names the scheme that would work.
            headers["WWW-Authenticate"] = 'Bearer realm="notifications"'
    elif isinstance(error, tornado.web.HTTPError) and error.status_code < 500:
        status = error.status_code
        code = _HTTP_CODES.get(status, "error")
        message = error.log_message % error.args if error.log_message and error.args else (
            error.log_message or HTTPStatus(status).phrase
        )
        if status == 405:
            message = f"{method} is not allowed here"
    elif status_code < 500:
        status = status_code
        code = _HTTP_CODES.get(status, "error")
        message = HTTPStatus(status).phrase
    else:
        status = status_code
        code, message = "internal_error", "the server failed to handle this request"
    return status, headers, json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))


def log_failure(method: str | None, path: str, exc_info: Any) -> None:
    """Log what went wrong serving a request, if it is worth a line.

    Domain errors under 500 are answers, not failures: nothing.  A domain
    503 is a warning without a traceback; anything else an error with one.
    Only the method and path are named: Tornado's own version logs the
    whole request, query string and headers included, which would put
    ``?token=`` and cookies in the log.
    """
    value = exc_info[1]
    if isinstance(value, (DomainError, tornado.web.HTTPError)) and getattr(value, "status_code", 400) < 500:
        return
    if isinstance(value, DomainError):
        log.warning("%s %s -> %s: %s", method, path, value.status, value.code)
        return
    log.error("uncaught exception in %s %s", method, path, exc_info=exc_info)


def log_access(status: int, method: str | None, path: str, seconds: float) -> None:
    """Access log: status, method, path without the query string, time.

    The query string is left out because ``?token=`` and ``?ticket=`` carry
    credentials.
    """
    # 503 is an answer (a dependency is down, /health says so), not a bug.
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 or status == 503 else logging.ERROR
    access_log.log(level, "%d %s %s %.1fms", status, method, path, 1000.0 * seconds)


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value.

    :raises AuthError: a header of another form.
    """
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("expected 'Authorization: Bearer <token>'", code="invalid_authorization")
    return token.strip()


def spend_publish(limiter: RateLimiter | None, principal: Principal) -> None:
    """Spend one of the caller's publishes (``--publish-rate``, per token subject).

    :param limiter: the publish limiter, None when publishing is not limited.
    :raises TooManyRequests: the caller's bucket is empty; ``Retry-After``
        says in how many whole seconds (at least 1) to try again.
    """
    if limiter is None:
        return
    wait = limiter.take(principal.user_id)
    if wait > 0:
        raise TooManyRequests(
            "too many publishes; slow down and retry after the Retry-After seconds",
            code="rate_limited",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


@dataclasses.dataclass
class Deps:
    """What every handler may use, built once by ``server.make_app``."""

    config: Config
    service: NotificationService
    manager: ConnectionManager
    tokens: TokenService
    broker: Broker
    instance_id: str
    metrics: Any
    inflight: "InFlight"
    #: A :class:`core.looplag.LoopLagMonitor`, or None where nothing samples.
    loop_lag: Any = None
    #: ``--cors-origins``; the default allows no other origin.
    cors: CorsPolicy = dataclasses.field(default_factory=CorsPolicy)
    #: ``--publish-rate``; None when publishing is not rate limited.
    publish_limiter: RateLimiter | None = None


class InFlight:
    """Counts requests being served, so shutdown can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.streams = 0


#: The connection's own body limit, lifted: :class:`LimitedRequestHandler`
#: counts the body itself and answers 413 (the connection layer would
#: refuse a body over its limit with a 400 and a close).
NO_CONNECTION_LIMIT = 1 << 62

_DIGITS = re.compile(r"[0-9]{1,19}\Z")

def declared_length(headers: Any) -> int | None:
    """The body size a well-formed ``Content-Length`` announces, else None.

    Repeated equal values (``5, 5``: some proxies do that) count once, as
    Tornado reads them.  A malformed value is None here: the connection
    layer refuses that message itself (a JSON 400 and a close; see README,
    Limits).
    """
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    values = {value.strip() for value in raw.split(",")}
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if _DIGITS.match(value) else None


def header_block_size(method: str | None, uri: str | None, version: str, headers: Any) -> int:
    """A request line plus header block's size as sent, near enough ("name: value\\r\\n" per header)."""
    size = len(method or "") + len(uri or "") + len(version) + 4
    return size + sum(len(name) + len(value) + 4 for name, value in headers.get_all())


@tornado.web.stream_request_body
class LimitedRequestHandler(tornado.web.RequestHandler):
    """Refuses a request over the header or body limit with a JSON error.

    The body is streamed in (``stream_request_body``) so that its size is
    counted as it arrives: a ``Content-Length`` over the limit is refused
    before a byte of the body is read, a chunked body as soon as it passes
    the limit, and in both cases the client gets the JSON 413 however big
    the body is, while the server never holds more than the limit.  The
    connection is then closed, after a lingering drain (see
    :meth:`core.http1.Connection.finish`) so that a client still sending
    does get the answer.
    """

    max_header_bytes = 32 * 1024
    max_body_bytes = 256 * 1024

    def set_limits(self, config: Config | None) -> None:
        """Take the limits from ``config`` (call from ``initialize``; None keeps the defaults)."""
        if config is not None:
            self.max_header_bytes = config.max_header_kb * 1024
            self.max_body_bytes = config.max_body_kb * 1024
        self._chunks: list[bytes] = []
        self._received = 0

    def check_limits(self) -> None:
        """Refuse oversized headers, or a body announced over the limit.

        :raises RequestHeadersTooLarge: request line plus headers over
            ``--max-header-kb`` (431).
        :raises PayloadTooLarge: ``Content-Length`` over ``--max-body-kb`` (413).
        """
        request = self.request
        set_max_body_size = getattr(request.connection, "set_max_body_size", None)
        if set_max_body_size is not None:
            set_max_body_size(NO_CONNECTION_LIMIT)
        size = header_block_size(request.method, request.uri, request.version, request.headers)
        # The answer comes before the body is read; Tornado then closes the
        # connection rather than read the body: say so.
        close = {"Connection": "close"}
        if size > self.max_header_bytes:
            raise RequestHeadersTooLarge(
                f"the request line and headers are larger than {self.max_header_bytes // 1024} KiB", headers=close
            )
        length = declared_length(request.headers)
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {self.max_body_bytes // 1024} KiB", headers=close)

    def data_received(self, chunk: bytes) -> None:
        """Keep the body up to the limit; past it, answer 413 at once."""
        if self._finished:
            return
        self._received += len(chunk)
        if self._received > self.max_body_bytes:
            self._chunks = []
            error = PayloadTooLarge(f"the body is larger than {self.max_body_bytes // 1024} KiB", headers={"Connection": "close"})
            self.send_error(error.status, exc_info=(type(error), error, None))
            return
        self._chunks.append(chunk)

    def request_body(self) -> bytes:
        """The whole request body (``self.request.body`` stays empty when streaming)."""
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]


class BaseHandler(LimitedRequestHandler):
    """JSON API handler: credentials, bodies, CORS, and the one error format."""

    deps: Deps

    def initialize(self, deps: Deps) -> None:
        """Receive the application's dependencies."""
        self.deps = deps
        self._counted = False
        self.set_limits(deps.config)
        self._set_cors_headers()

    def prepare(self) -> None:
        """Count the request as in flight until :meth:`on_finish`; check its size."""
        self.deps.inflight.count += 1
        self._counted = True
        self.check_limits()

    def on_finish(self) -> None:
        """Stop counting the request."""
        self._stop_counting()

    def _stop_counting(self) -> None:
        if self._counted:
            self._counted = False
            self.deps.inflight.count -= 1

    def clear(self) -> None:
        """Reset the response: JSON, not cached, not sniffed.

        Tornado's own version formats the ``Date`` header through
        ``email.utils`` on every request (5% of a create's CPU): here it is
        formatted once a second.  No ``Server`` header: the version of what
        runs here is nobody's business.
        """
        self._headers = httputil.HTTPHeaders(json_headers())
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def on_connection_close(self) -> None:
        """The client left before its body was in: nothing will finish this request.

        Tornado then drops the request without calling :meth:`on_finish`
        (the body timeout, a client that hangs up mid-body), so it stops
        being counted here, or shutdown would wait for it in vain.
        """
        body = getattr(self.request, "_body_future", None)
        if body is not None and not body.done():
            self._stop_counting()
        super().on_connection_close()

    def set_default_headers(self) -> None:
        """CORS headers if configured (:meth:`clear` sets the JSON defaults)."""
        # Also called (through clear()) before initialize() has run.
        if hasattr(self, "deps"):
            self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        for name, value in self.deps.cors.headers(self.request.headers.get("Origin")).items():
            self.set_header(name, value)

    def allowed_methods(self) -> list[str]:
        """The methods this path answers (for ``Allow`` and CORS preflights)."""
        methods = [
            method
            for method in ("GET", "POST", "PATCH", "DELETE")
            if getattr(type(self), method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())
        ]
        return methods + ["OPTIONS"]

    def options(self, *args: str) -> None:
        """A CORS preflight (405 when ``--cors-origins`` is empty).

        An allowed origin, or none, gets 204 with ``Allow`` (and the
        ``Access-Control-*`` answer); an origin not on the list gets 403.
        """
        cors = self.deps.cors
        if not cors.enabled:
            raise tornado.web.HTTPError(405)
        origin = self.request.headers.get("Origin")
        if origin is not None and not cors.allows(origin):
            raise Forbidden("this origin is not allowed to call the API", code="origin_not_allowed")
        methods = self.allowed_methods()
        self.set_header("Allow", ", ".join(methods))
        for name, value in cors.preflight_headers(origin, methods).items():
            self.set_header(name, value)
        self.set_status(204)
        self.finish()

    def check_publish_rate(self, principal: Principal) -> None:
        """Spend one of the caller's publishes (see :func:`spend_publish`)."""
        spend_publish(self.deps.publish_limiter, principal)

    # -- output ---------------------------------------------------------------

    def send_json(self, value: Any, status: int = 200) -> None:
        """Finish with ``value`` as JSON (its own text if it is :class:`Encoded`)."""
        self.set_status(status)
        text = value.text if isinstance(value, Encoded) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self.finish(text.encode("utf-8"))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Map a domain error (or Tornado's own) to the contract's error body."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        status, headers, body = error_answer(error, status_code, self.request.method)
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Domain errors are answers, not failures (see :func:`log_failure`)."""
        log_failure(self.request.method, self.request.path, (typ, value, tb))

    # -- input ----------------------------------------------------------------

    def json_body(self, required: bool = True) -> dict[str, Any]:
        """The request body as a JSON object.

        :param required: when False, an empty body reads as ``{}``.
        :raises UnsupportedMediaType: a body that is not ``application/json``.
        """
        body = self.request_body()
        if not body and not required:
            return {}
        media_type = self.request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType("the body must be application/json")
        return parse_json_body(body)

    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer`` header, if one is sent.

        :raises AuthError: an Authorization header of another form.
        """
        header = self.request.headers.get("Authorization")
        return None if header is None else bearer_token(header)

    async def authenticate(self, allow_query: bool = False) -> Principal:
        """The caller, from the first credential present.

        Order: ``Authorization: Bearer``, the ``access_token`` cookie, then
        (stream only, since EventSource cannot send headers) ``?ticket=``
        and ``?token=``.  The first one present decides: a bad header is
        not rescued by a good cookie.

        :raises AuthError: no credential, or an invalid one.
        """
        try:
            token = self.bearer()
            if token is None:
                token = self.get_cookie("access_token") or None
            if token is None and allow_query:
                ticket = self.get_query_argument("ticket", None)
                if ticket:
                    return await self.deps.service.redeem_ticket(ticket)
                token = self.get_query_argument("token", None) or None
            if token is None:
                raise AuthError("a credential is required", code="missing_credential")
            return self.deps.tokens.verify(token)
        except AuthError as error:
            error.headers.setdefault("WWW-Authenticate", 'Bearer realm="notifications"')
            raise


class NotFoundHandler(BaseHandler):
    """Every unknown path: a JSON 404."""

    def prepare(self) -> None:
        """Answer 404 whatever the method."""
        super().prepare()
        raise tornado.web.HTTPError(404, "no such resource: %s", self.request.path)
