"""REST handlers: authentication, notifications, events for other modules.

Every ``{userId}`` taken from a path is checked with
:func:`~core.domain.validation.check_user_id` before it reaches a query: an id no
user can have (a control character, over 128 characters) is a 422, where
PostgreSQL would otherwise refuse the parameter (NUL) and answer a 500.
"""

from __future__ import annotations

import urllib.parse

from core.domain.auth import require_creator, require_event_publisher, require_reader
from core.domain.errors import ValidationError
from core.domain.validation import (
    check_user_id,
    parse_bool,
    parse_limit,
    validate_event,
    validate_notification,
    validate_read_flag,
)
from handlers.base import BaseHandler


class LoginHandler(BaseHandler):
    """``POST /api/v1/auth/login``: password -> token and HttpOnly cookie."""

    async def post(self) -> None:
        """Check the credentials and hand out a token."""
        body = self.json_body()
        user_id, password = body.get("userId"), body.get("password")
        if not isinstance(user_id, str) or not user_id or not isinstance(password, str) or not password:
            raise ValidationError("userId and password must be non-empty strings")
        result = await self.deps.service.login(user_id, password)
        self.set_cookie(
            "access_token",
            result["token"],
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.deps.config.cookie_secure,
            max_age=result["expiresIn"],
        )
        self.send_json(result)


class LogoutHandler(BaseHandler):
    """``POST /api/v1/auth/logout``: clear the cookie."""

    def post(self) -> None:
        """Expire the ``access_token`` cookie.

        No credential is read, but a logout carrying the cookie (and no
        ``Authorization``) is a cookie write like any other: another page
        of the same site must not sign the user out
        (:meth:`~handlers.base.BaseHandler.check_cookie_write`).
        """
        if "Authorization" not in self.request.headers and self.get_cookie("access_token"):
            self.check_cookie_write()
        self.clear_cookie("access_token", path="/", httponly=True, samesite="Lax", secure=self.deps.config.cookie_secure)
        self.set_status(204)
        self.finish()


class StreamTicketHandler(BaseHandler):
    """``POST /api/v1/auth/stream-ticket``: a one-time credential for ``?ticket=``."""

    async def post(self) -> None:
        """Issue a ticket for the caller's own stream."""
        principal = await self.authenticate()
        self.check_write_rate(principal)
        self.send_json(await self.deps.service.issue_ticket(principal))


class NotificationsHandler(BaseHandler):
    """``/api/v1/users/{userId}/notifications``: list and create."""

    async def get(self, user_id: str) -> None:
        """A page of notifications, newest first."""
        principal = await self.authenticate()
        require_reader(principal, check_user_id(user_id))
        limit = parse_limit(self.get_query_argument("limit", None))
        before = self.get_query_argument("before", None)
        unread = parse_bool("unread", self.get_query_argument("unread", None))
        self.send_json(await self.deps.service.list_notifications(principal, user_id, limit, before, unread))

    async def post(self, user_id: str) -> None:
        """Store a notification and push it to the user's devices."""
        principal = await self.authenticate()
        self.check_publish_rate(principal)
        require_creator(principal, check_user_id(user_id))
        fields = validate_notification(self.json_body())
        origin = self.request.headers.get("X-Connection-Id") or None
        notification = await self.deps.service.create_notification(principal, user_id, fields, origin)
        self.set_header(
            "Location",
            "/api/v1/users/{}/notifications/{}".format(urllib.parse.quote(user_id, safe=""), notification["notificationId"]),
        )
        self.send_json(notification, status=201)


class UnreadCountHandler(BaseHandler):
    """``GET .../notifications/unread-count``."""

    async def get(self, user_id: str) -> None:
        """How many notifications are unread."""
        principal = await self.authenticate()
        check_user_id(user_id)
        self.send_json({"unreadCount": await self.deps.service.unread_count(principal, user_id)})


class ReadAllHandler(BaseHandler):
    """``POST .../notifications/read-all``."""

    async def post(self, user_id: str) -> None:
        """Mark every notification read."""
        principal = await self.authenticate()
        self.check_write_rate(principal)
        check_user_id(user_id)
        self.send_json(await self.deps.service.read_all(principal, user_id))


class NotificationHandler(BaseHandler):
    """``.../notifications/{notificationId}``: read, mark read, delete."""

    async def get(self, user_id: str, notification_id: str) -> None:
        """One notification."""
        principal = await self.authenticate()
        check_user_id(user_id)
        self.send_json(await self.deps.service.get_notification(principal, user_id, notification_id))

    async def patch(self, user_id: str, notification_id: str) -> None:
        """Set the read state; the user's other devices are told."""
        principal = await self.authenticate()
        self.check_write_rate(principal)
        require_reader(principal, check_user_id(user_id))
        read = validate_read_flag(self.json_body())
        self.send_json(await self.deps.service.set_read(principal, user_id, notification_id, read))

    async def delete(self, user_id: str, notification_id: str) -> None:
        """Delete it; the user's devices are told."""
        principal = await self.authenticate()
        self.check_write_rate(principal)
        check_user_id(user_id)
        await self.deps.service.delete(principal, user_id, notification_id)
        self.set_status(204)
        self.finish()


class EventsHandler(BaseHandler):
    """``POST /api/v1/events``: named events from other modules."""

    async def post(self) -> None:
        """Store and push one named event to each listed user."""
        principal = await self.authenticate()
        self.check_publish_rate(principal)
        require_event_publisher(principal)
        name, user_ids, data = validate_event(self.json_body())
        published = await self.deps.service.publish_event(principal, name, user_ids, data)
        self.send_json({"published": published}, status=202)
