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

from core.domain.auth import Principal, TokenService
from core.fanout.broker import Broker
from core.runtime.config import Config
from core.streams.manager import StreamManager
from handlers.cors import CorsPolicy
from core.domain.errors import (
    AuthError,
    BadRequest,
    DomainError,
    Forbidden,
    PayloadTooLarge,
    RequestHeadersTooLarge,
    TooManyRequests,
    UnsupportedMediaType,
)
from core.transport.http1 import HTTPCounters
from core.domain.ratelimit import RateLimiter
from core.domain.service import NotificationService
from core.domain.validation import Encoded, parse_json_body

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


#: Methods that change something: made with the cookie alone, they must
#: come from a page the server trusts (see :meth:`BaseHandler.check_cookie_write`).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _without_default_port(authority: str, scheme: str) -> str:
    default = _DEFAULT_PORTS[scheme]
    return authority[: -len(default)] if authority.endswith(default) else authority


def is_own_origin(origin: str | None, host: str | None) -> bool:
    """Whether an ``Origin`` names the server the request was sent to.

    The Origin's ``host[:port]`` (a default port 80/443 left out) must equal
    the ``Host`` header, case-insensitively.  ``null``, a missing value or
    anything that is not ``http(s)://host[:port]`` is not.

    :param origin: the request's ``Origin`` header, or None.
    :param host: the request's ``Host`` header, or None.
    """
    if not origin or not host:
        return False
    scheme, separator, authority = origin.strip().lower().partition("://")
    if not separator or scheme not in _DEFAULT_PORTS or not authority or any(c in authority for c in "/?#@\\ "):
        return False
    return _without_default_port(authority, scheme) == _without_default_port(host.strip().lower(), scheme)


def spend_budget(limiter: RateLimiter | None, principal: Principal, what: str = "publishes") -> None:
    """Spend one of the caller's writes from ``limiter`` (per token subject).

    Two budgets use it: ``--publish-rate`` for notifications and events,
    ``--write-rate`` for every other authenticated write.  Called before
    anything is written, so a refused request changes nothing.

    :param limiter: the limiter, None when that budget is not limited.
    :param what: what is being counted, for the message ("publishes", "writes").
    :raises TooManyRequests: the caller's bucket is empty; ``Retry-After``
        says in how many whole seconds (at least 1) to try again.
    """
    if limiter is None:
        return
    wait = limiter.take(principal.user_id)
    if wait > 0:
        raise TooManyRequests(
            f"too many {what}; slow down and retry after the Retry-After seconds",
            code="rate_limited",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


@dataclasses.dataclass
class Deps:
    """What every handler may use, built once by ``server.make_app``."""

    config: Config
    service: NotificationService
    manager: StreamManager
    tokens: TokenService
    broker: Broker
    instance_id: str
    metrics: Any
    #: Requests in flight and refusals, counted by the connection layer
    #: (:class:`core.transport.http1.HTTPCounters`).
    http_counters: HTTPCounters
    #: A :class:`core.runtime.looplag.LoopLagMonitor`, or None where nothing samples.
    loop_lag: Any = None
    #: ``--cors-origins``; the default allows no other origin.
    cors: CorsPolicy = dataclasses.field(default_factory=CorsPolicy)
    #: ``--publish-rate``; None when publishing is not rate limited.
    publish_limiter: RateLimiter | None = None
    #: ``--write-rate``: stream tickets, read state, deletes; None when not limited.
    write_limiter: RateLimiter | None = None


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
    :meth:`core.transport.http1.Connection.finish`) so that a client still sending
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
        self.set_limits(deps.config)
        self._set_cors_headers()

    def prepare(self) -> None:
        """Check the request's size before its body is read."""
        self.check_limits()

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
        """Spend one of the caller's publishes (see :func:`spend_budget`)."""
        spend_budget(self.deps.publish_limiter, principal, "publishes")

    def check_write_rate(self, principal: Principal) -> None:
        """Spend one of the caller's other writes (``--write-rate``; see :func:`spend_budget`)."""
        spend_budget(self.deps.write_limiter, principal, "writes")

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
        if self.media_type() != "application/json":
            raise UnsupportedMediaType("the body must be application/json")
        return parse_json_body(body)

    def media_type(self) -> str:
        """The request's ``Content-Type`` without parameters, lowercased ("" when absent)."""
        return self.request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def decode_argument(self, value: bytes | str, name: str | None = None) -> str:
        """A query or path argument decoded as UTF-8, never quoted in an error.

        Every ``get_query_argument`` goes through here.  Tornado's own
        version answers a 400 whose message quotes the first bytes of the
        value, which for ``?ticket=`` or ``?token=`` is a credential.

        :raises BadRequest: not UTF-8: ``invalid_query`` naming the argument
            (a name the handler asked for, never one from the request), or
            ``invalid_path`` for part of the path.
        """
        if isinstance(value, str):
            return value
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            if name is None:
                raise BadRequest("the path is not valid UTF-8 once percent-decoded", code="invalid_path") from None
            raise BadRequest(f"the query argument {name} is not valid UTF-8", code="invalid_query") from None

    def check_cookie_write(self) -> None:
        """Refuse a write that the ``access_token`` cookie alone authenticates, unless a trusted page sent it.

        ``SameSite=Lax`` keeps the cookie off another *site*'s writes, but a
        sibling subdomain is the same site: its form could otherwise mark
        read, delete or take stream tickets as the signed-in user.  So a
        cookie-only write must say it comes from this server's own pages
        (``Origin`` equal to ``Host``, or ``Sec-Fetch-Site: same-origin``,
        which browsers set and pages cannot) or from an origin named in
        ``--cors-origins`` (``*`` names none: it never carries
        credentials), and its body, if any, must be JSON, which no form can
        send.  A missing ``Origin`` is foreign: every browser sends one on
        a cross-origin write.  Callers sending ``Authorization`` never get
        here.

        :raises Forbidden: ``cross_site_request``.
        """
        if self.request.method not in WRITE_METHODS:
            return
        headers = self.request.headers
        origin = headers.get("Origin")
        trusted = (
            headers.get("Sec-Fetch-Site", "").strip().lower() == "same-origin"
            or is_own_origin(origin, headers.get("Host"))
            or self.deps.cors.lists(origin)
        )
        if not trusted:
            raise Forbidden(
                "a write authenticated by the cookie alone must come from this site's own pages or an allowed "
                "origin; other clients send Authorization: Bearer",
                code="cross_site_request",
            )
        if self.request_body() and self.media_type() != "application/json":
            raise Forbidden("a write authenticated by the cookie alone must send its body as application/json",
                            code="cross_site_request")

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
        not rescued by a good cookie.  A write the cookie authenticates
        must pass :meth:`check_cookie_write` first.

        :raises AuthError: no credential, or an invalid one.
        :raises Forbidden: a cookie-only write from an untrusted page.
        """
        try:
            token = self.bearer()
            if token is None:
                token = self.get_cookie("access_token") or None
                if token is not None:
                    self.check_cookie_write()
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
