"""The route table: every path of the API, its methods, the function that serves each.

One table for both doors: :mod:`handlers.tornado_door` makes a Tornado
route of each entry, :mod:`handlers.lane` matches the same patterns itself.
A pattern's groups are the path's pieces, still percent-encoded (as
Tornado's router matches them); each door decodes them with
:func:`handlers.http.decode_path_argument` before the function sees them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.web

from core.domain.errors import Forbidden
from handlers import api, monitoring, stream
from handlers.call import Answer, Call

#: A route's function: ``fn(call, *path_pieces)`` -> an Answer or a StreamOpening.
RouteFunction = Callable[..., Awaitable[Any]]

_USER = r"/api/v1/users/([^/]+)/notifications"


@dataclasses.dataclass(frozen=True)
class Route:
    """One path of the API.

    :param pattern: the path as a regular expression (groups = pieces).
    :param methods: method -> the function serving it.
    """

    pattern: str
    methods: dict[str, RouteFunction]

    @property
    def allowed(self) -> list[str]:
        """The methods this path answers, ``OPTIONS`` (CORS preflights) included."""
        return [method for method in ("GET", "POST", "PATCH", "DELETE") if method in self.methods] + ["OPTIONS"]


#: In the order they are tried (as Tornado's router tries them): the
#: busiest first; a more specific path before ``_USER/([^/]+)``.
ROUTES: tuple[Route, ...] = (
    Route(_USER, {"GET": api.list_notifications, "POST": api.create_notification}),
    Route(_USER + r"/stream", {"GET": stream.open_stream}),
    Route(r"/api/v1/events", {"POST": api.publish_event}),
    Route(_USER + r"/unread-count", {"GET": api.unread_count}),
    Route(_USER + r"/read-all", {"POST": api.read_all}),
    Route(
        _USER + r"/([^/]+)",
        {"GET": api.get_notification, "PATCH": api.set_read, "DELETE": api.delete_notification},
    ),
    Route(r"/api/v1/auth/login", {"POST": api.login}),
    Route(r"/api/v1/auth/logout", {"POST": api.logout}),
    Route(r"/api/v1/auth/stream-ticket", {"POST": api.stream_ticket}),
    Route(r"/api/v1/stats", {"GET": monitoring.stats}),
    Route(r"/api/v1/openapi\.json", {"GET": monitoring.openapi}),
    Route(r"/health/sse", {"GET": monitoring.sse_health}),
    Route(r"/health", {"GET": monitoring.health}),
    Route(r"/metrics", {"GET": monitoring.metrics}),
)

#: The patterns compiled as Tornado compiles them (anchored at both ends).
COMPILED: tuple[tuple[re.Pattern[str], Route], ...] = tuple(
    (re.compile(route.pattern + r"\Z"), route) for route in ROUTES
)


def match(path: str) -> tuple[Route, tuple[str, ...]] | None:
    """The route for ``path`` (without its query string) and its raw pieces, or None."""
    for pattern, route in COMPILED:
        found = pattern.match(path)
        if found is not None:
            return route, found.groups()
    return None


def preflight(call: Call, route: Route) -> Answer:
    """A CORS preflight (``OPTIONS``) of ``route``: 405 when ``--cors-origins`` is empty.

    An allowed origin, or none, gets 204 with ``Allow`` (and the
    ``Access-Control-*`` answer); an origin not on the list gets 403.
    """
    cors = call.deps.cors
    if not cors.enabled:
        raise tornado.web.HTTPError(405)
    origin = call.headers.get("Origin")
    if origin is not None and not cors.allows(origin):
        raise Forbidden("this origin is not allowed to call the API", code="origin_not_allowed")
    headers = {"Allow": ", ".join(route.allowed)}
    headers.update(cors.preflight_headers(origin, route.allowed))
    return Answer(204, headers=headers)
