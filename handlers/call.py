"""A request parsed once, and what a route answers.

Every route of :mod:`handlers.routes` is a function of a :class:`Call`: the
method, target, headers and body of one request, whichever door it came
through (a Tornado ``RequestHandler``, or the lane of :mod:`handlers.lane`).
What the request means is decided here, once: which credential wins
(:meth:`Call.principal`), whether a cookie-only write may pass
(:meth:`Call.check_cookie_write`), how a query argument decodes, whether the
body is JSON.  A route returns an :class:`Answer` (or a
:class:`StreamOpening`), and each door writes that out its own way.
"""

from __future__ import annotations

import dataclasses
import http.cookies
import re
from typing import Any

import tornado.escape
from tornado import httputil

from core.domain.auth import Principal, TokenService
from core.domain.errors import AuthError, BadRequest, Forbidden, UnsupportedMediaType
from core.domain.ratelimit import RateLimiter
from core.domain.service import NotificationService
from core.domain.validation import Encoded, compact_json, parse_json_body
from core.fanout.broker import Broker
from core.runtime.config import Config
from core.streams.manager import Device, StreamManager
from core.streams.replay import Replayer, StreamStart
from core.transport.http1 import HTTPCounters
from handlers.cors import CorsPolicy
from handlers.http import CHALLENGE, WRITE_METHODS, bearer_token, is_own_origin, spend_budget

#: What a query argument may not carry once decoded (Tornado's rule, kept):
#: control characters become spaces.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")
#: The most query fields a request may have (Tornado's request builder
#: refuses more, and so does the lane: see :mod:`handlers.lane`).
MAX_QUERY_FIELDS = 1000


@dataclasses.dataclass
class Deps:
    """What every route may use, built once by ``server.make_app``."""

    config: Config
    service: NotificationService
    manager: StreamManager
    tokens: TokenService
    broker: Broker
    instance_id: str
    metrics: Any
    #: Requests in flight and refusals, counted by the connection layer.
    http_counters: HTTPCounters
    #: Replays and catch-ups of this process's streams (built with the manager).
    replay: Replayer
    #: A :class:`core.runtime.looplag.LoopLagMonitor`, or None where nothing samples.
    loop_lag: Any = None
    #: ``--cors-origins``; the default allows no other origin.
    cors: CorsPolicy = dataclasses.field(default_factory=CorsPolicy)
    #: ``--publish-rate``; None when publishing is not rate limited.
    publish_limiter: RateLimiter | None = None
    #: ``--write-rate``: stream tickets, read state, deletes; None when not limited.
    write_limiter: RateLimiter | None = None


class Answer:
    """What a route answers: a status, its own headers, a body.

    Every door adds the JSON defaults, the CORS headers and the length.
    """

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else {}

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
        """``value`` as JSON (its own text when it is an :class:`Encoded`, encoded once)."""
        text = value.text if isinstance(value, Encoded) else compact_json(value)
        return cls(status, text.encode("utf-8"), headers)


@dataclasses.dataclass
class StreamOpening:
    """What the stream route answers: a subscribed device and where it starts.

    The door sends the stream's headers and first frames, then hands the
    connection to the SSE manager (:func:`handlers.stream.hand_over`).
    """

    device: Device
    start: StreamStart


def cookie_header(name: str, value: str, max_age: int, secure: bool) -> str:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Lax, for the whole site."""
    morsel: http.cookies.Morsel = http.cookies.Morsel()
    morsel.set(name, value, value)
    morsel["path"] = "/"
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    morsel["max-age"] = str(max_age)
    if max_age <= 0:
        morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    if secure:
        morsel["secure"] = True
    return morsel.OutputString()


class Call:
    """One request, as every route sees it.

    :param deps: the application's dependencies.
    :param method: the request's method.
    :param uri: its target (path and query string, still percent-encoded).
    :param headers: its headers.
    :param body: its body, whole (the doors collect it within the limits).
    """

    __slots__ = ("deps", "method", "uri", "path", "headers", "body", "_query")

    def __init__(self, deps: Deps, method: str, uri: str, headers: httputil.HTTPHeaders, body: bytes = b"") -> None:
        self.deps = deps
        self.method = method
        self.uri = uri
        self.path = uri.split("?", 1)[0]
        self.headers = headers
        self.body = body
        self._query: dict[str, list[bytes]] | None = None

    # -- the query string ------------------------------------------------------

    def query_argument(self, name: str) -> str | None:
        """The last value of ``?name=``, decoded, stripped; None when absent.

        :raises BadRequest: ``invalid_query`` when it is not UTF-8 once
            percent-decoded (the message names the argument, never its
            value: it may be a credential).
        """
        if self._query is None:
            self._query = parse_query(self.uri)
        values = self._query.get(name)
        if not values:
            return None
        try:
            text = values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"the query argument {name} is not valid UTF-8", code="invalid_query") from None
        return _CONTROL.sub(" ", text).strip()

    # -- the body ------------------------------------------------------------------

    def media_type(self) -> str:
        """The ``Content-Type`` without parameters, lowercased ("" when absent)."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def json_body(self, required: bool = True) -> dict[str, Any]:
        """The body as a JSON object.

        :param required: when False, an empty body reads as ``{}``.
        :raises UnsupportedMediaType: a body that is not ``application/json``.
        :raises BadRequest: not UTF-8 or not JSON.
        :raises ValidationError: JSON that is not an object.
        """
        if not self.body and not required:
            return {}
        if self.media_type() != "application/json":
            raise UnsupportedMediaType("the body must be application/json")
        return parse_json_body(self.body)

    # -- credentials ---------------------------------------------------------------

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name``, or None."""
        header = self.headers.get("Cookie")
        if header is None:
            return None
        return httputil.parse_cookie(header).get(name)

    async def principal(self, allow_query: bool = False) -> Principal:
        """The caller, from the first credential present.

        Order: ``Authorization: Bearer``, the ``access_token`` cookie, then
        (the stream only, since EventSource cannot send headers)
        ``?ticket=`` and ``?token=``.  The first one present decides: a bad
        header is not rescued by a good cookie.  A write the cookie
        authenticates must pass :meth:`check_cookie_write` first.

        :raises AuthError: no credential, or an invalid one (with the
            ``WWW-Authenticate`` challenge).
        :raises Forbidden: a cookie-only write from an untrusted page.
        """
        try:
            header = self.headers.get("Authorization")
            token = bearer_token(header) if header is not None else None
            if token is None:
                token = self.cookie("access_token") or None
                if token is not None:
                    self.check_cookie_write()
            if token is None and allow_query:
                ticket = self.query_argument("ticket")
                if ticket:
                    return await self.deps.service.redeem_ticket(ticket)
                token = self.query_argument("token") or None
            if token is None:
                raise AuthError("a credential is required", code="missing_credential")
            return self.deps.tokens.verify(token)
        except AuthError as error:
            error.headers.setdefault("WWW-Authenticate", CHALLENGE)
            raise

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
        if self.method not in WRITE_METHODS:
            return
        headers = self.headers
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
        if self.body and self.media_type() != "application/json":
            raise Forbidden(
                "a write authenticated by the cookie alone must send its body as application/json",
                code="cross_site_request",
            )

    # -- budgets ---------------------------------------------------------------------

    def spend_publish(self, principal: Principal) -> None:
        """Spend one of the caller's publishes (``--publish-rate``)."""
        spend_budget(self.deps.publish_limiter, principal, "publishes")

    def spend_write(self, principal: Principal) -> None:
        """Spend one of the caller's other writes (``--write-rate``)."""
        spend_budget(self.deps.write_limiter, principal, "writes")


def parse_query(uri: str) -> dict[str, list[bytes]]:
    """The query string of ``uri`` as Tornado parses it (values still bytes).

    :raises BadRequest: more than :data:`MAX_QUERY_FIELDS` fields.
    """
    _, _, query = uri.partition("?")
    if not query:
        return {}
    try:
        return tornado.escape.parse_qs_bytes(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise BadRequest(f"the query string has more than {MAX_QUERY_FIELDS} fields", code="invalid_query") from None
