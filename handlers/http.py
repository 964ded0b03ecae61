"""What every answer shares, whichever door a request came through.

The contract's error body (:func:`error_answer`), the JSON defaults of every
answer, the access and failure logs, the request size limits
(:class:`BodyLimit`), the per-principal budgets (:func:`spend_budget`) and
the small parsers of credentials and origins.  No handler, route or door
builds an error body or a log line any other way.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.parse
from http import HTTPStatus
from typing import Any

import tornado.web
from tornado import httputil

from core.domain.auth import Principal
from core.domain.errors import (
    AuthError,
    BadRequest,
    DomainError,
    PayloadTooLarge,
    RequestHeadersTooLarge,
    TooManyRequests,
)
from core.domain.ratelimit import RateLimiter

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

#: The ``WWW-Authenticate`` challenge of every 401 (RFC 9110).
CHALLENGE = 'Bearer realm="notifications"'

_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The current time as an HTTP ``Date`` value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, httputil.format_timestamp(now))
    return _date_cache[1]


def json_headers() -> dict[str, str]:
    """The headers every answer starts with: JSON, not cached, not sniffed."""
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
            headers["WWW-Authenticate"] = CHALLENGE
    elif isinstance(error, tornado.web.HTTPError) and error.status_code < 500:
        status = error.status_code
        code = _HTTP_CODES.get(status, "error")
        message = (
            error.log_message % error.args
            if error.log_message and error.args
            else (error.log_message or HTTPStatus(status).phrase)
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


def decode_path_argument(raw: bytes | str) -> str:
    """A piece of the path matched by a route, percent-decoded, as UTF-8.

    :raises BadRequest: ``invalid_path`` when it is not UTF-8 once decoded.
    """
    if isinstance(raw, str):
        raw = urllib.parse.unquote_to_bytes(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the path is not valid UTF-8 once percent-decoded", code="invalid_path") from None


#: Methods that change something: made with the cookie alone, they must
#: come from a page the server trusts (see :meth:`handlers.call.Call.check_cookie_write`).
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


#: The connection's own body limit, lifted: :class:`BodyLimit` counts the
#: body itself and answers 413 (the connection layer would refuse a body
#: over its limit with a 400 and a close).
NO_CONNECTION_LIMIT = 1 << 62

_DIGITS = re.compile(r"[0-9]{1,19}\Z")


def declared_length(headers: Any) -> int | None:
    """The body size a well-formed ``Content-Length`` announces, else None.

    Repeated equal values (``5, 5``: some proxies do that) count once, as
    Tornado reads them.  A malformed value is None here: the connection
    layer refuses that message itself (a JSON 400 and a close).
    """
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    if raw.isascii() and raw.isdigit() and len(raw) <= 19:
        return int(raw)  # the usual case: one plain number
    values = {value.strip() for value in raw.split(",")}
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if _DIGITS.match(value) else None


def header_block_size(method: str | None, uri: str | None, version: str, headers: Any) -> int:
    """A request line plus header block's size as sent, near enough ("name: value\\r\\n" per header)."""
    size = len(method or "") + len(uri or "") + len(version) + 4
    return size + sum(len(name) + len(value) + 4 for name, value in headers.get_all())


class BodyLimit:
    """The request size limits, for either door: 431 and 413 as JSON errors.

    A request line plus headers over ``max_header_bytes`` is refused, and
    so is a ``Content-Length`` over ``max_body_bytes``, before a byte of
    the body is read; a body without a length (chunked) as soon as it
    passes the limit.  The server never holds more than the limit; the
    connection then closes after a lingering drain, so a client still
    sending does get the answer.

    :param max_header_bytes: ``--max-header-kb`` in bytes.
    :param max_body_bytes: ``--max-body-kb`` in bytes.
    """

    __slots__ = ("max_header_bytes", "max_body_bytes", "_chunks", "_received")

    def __init__(self, max_header_bytes: int, max_body_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._chunks: list[bytes] = []
        self._received = 0

    def check_head(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> None:
        """Refuse oversized headers, or a body announced over the limit.

        :raises RequestHeadersTooLarge: 431.
        :raises PayloadTooLarge: 413.
        """
        size = header_block_size(start_line.method, start_line.path, start_line.version, headers)
        # The answer comes before the body is read, and the connection
        # then closes rather than read it: say so.
        if size > self.max_header_bytes:
            raise RequestHeadersTooLarge(
                f"the request line and headers are larger than {self.max_header_bytes // 1024} KiB",
                headers={"Connection": "close"},
            )
        length = declared_length(headers)
        if length is not None and length > self.max_body_bytes:
            raise self._too_large()

    def take(self, chunk: bytes) -> None:
        """Keep ``chunk`` of the body.  :raises PayloadTooLarge: past the limit (what was kept is dropped)."""
        self._received += len(chunk)
        if self._received > self.max_body_bytes:
            self._chunks = []
            raise self._too_large()
        self._chunks.append(chunk)

    def body(self) -> bytes:
        """The body kept so far, whole."""
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the body is larger than {self.max_body_bytes // 1024} KiB", headers={"Connection": "close"}
        )
