"""The base handler: dependencies, credentials, JSON in and out, errors.

Every error leaves through :meth:`BaseHandler.write_error` as the contract's
``{"error": {"code", "message"}}`` body; handlers raise domain errors and
never build error JSON themselves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from http import HTTPStatus
from typing import Any

import tornado.web

from core.auth import Principal, TokenService
from core.broker import Broker
from core.config import Config
from core.connections import ConnectionManager
from core.errors import AuthError, DomainError, PayloadTooLarge, UnsupportedMediaType
from core.service import NotificationService
from core.validation import parse_json_body

log = logging.getLogger("notify.http")

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
    429: "too_many_requests",
    503: "unavailable",
}


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


class InFlight:
    """Counts requests being served, so shutdown can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.streams = 0


class BaseHandler(tornado.web.RequestHandler):
    """JSON API handler: credentials, bodies, and the one error format."""

    deps: Deps

    def initialize(self, deps: Deps) -> None:
        """Receive the application's dependencies."""
        self.deps = deps
        self._counted = False

    def prepare(self) -> None:
        """Count the request as in flight until :meth:`on_finish`."""
        self.deps.inflight.count += 1
        self._counted = True

    def on_finish(self) -> None:
        """Stop counting the request."""
        if self._counted:
            self._counted = False
            self.deps.inflight.count -= 1

    def set_default_headers(self) -> None:
        """Every response: JSON, not cached, not sniffed."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    # -- output ---------------------------------------------------------------

    def send_json(self, value: Any, status: int = 200) -> None:
        """Finish with ``value`` as JSON."""
        self.set_status(status)
        self.finish(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Map a domain error (or Tornado's own) to the contract's error body."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, DomainError):
            self.set_status(error.status)
            for name, value in error.headers.items():
                self.set_header(name, value)
            code, message = error.code, error.message
            if error.status == 401 and "WWW-Authenticate" not in error.headers:
                # RFC 9110: every 401 names the scheme that would work.
                self.set_header("WWW-Authenticate", 'Bearer realm="notifications"')
        elif isinstance(error, tornado.web.HTTPError) and error.status_code < 500:
            code = _HTTP_CODES.get(error.status_code, "error")
            message = error.log_message % error.args if error.log_message and error.args else (
                error.log_message or HTTPStatus(error.status_code).phrase
            )
            if error.status_code == 405:
                message = f"{self.request.method} is not allowed here"
        elif status_code < 500:
            code = _HTTP_CODES.get(status_code, "error")
            message = HTTPStatus(status_code).phrase
        else:
            code, message = "internal_error", "the server failed to handle this request"
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Domain errors are answers, not failures: no traceback for them."""
        if isinstance(value, (DomainError, tornado.web.HTTPError)) and getattr(value, "status_code", 400) < 500:
            return
        if isinstance(value, DomainError):
            log.warning("%s %s -> %s: %s", self.request.method, self.request.path, value.status, value.code)
            return
        # Tornado's own version logs the whole request, query string and
        # headers included: that would put ?token= and cookies in the log.
        log.error("uncaught exception in %s %s", self.request.method, self.request.path, exc_info=(typ, value, tb))

    # -- input ----------------------------------------------------------------

    def json_body(self, required: bool = True) -> dict[str, Any]:
        """The request body as a JSON object.

        :param required: when False, an empty body reads as ``{}``.
        :raises PayloadTooLarge: over ``--max-body-kb``.
        :raises UnsupportedMediaType: a body that is not ``application/json``.
        """
        body = self.request.body
        if len(body) > self.deps.config.max_body_kb * 1024:
            raise PayloadTooLarge(f"the body is larger than {self.deps.config.max_body_kb} KiB")
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
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("expected 'Authorization: Bearer <token>'", "invalid_authorization")
        return token.strip()

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


def _unauthorized(message: str, code: str) -> AuthError:
    return AuthError(message, code=code)


class NotFoundHandler(BaseHandler):
    """Every unknown path: a JSON 404."""

    def prepare(self) -> None:
        """Answer 404 whatever the method."""
        super().prepare()
        raise tornado.web.HTTPError(404, "no such resource: %s", self.request.path)
