"""The REST routes: authentication, notifications, events for other modules.

Each is a function of a :class:`~handlers.call.Call` (and the path's
pieces) that returns an :class:`~handlers.call.Answer`; either door serves
it (see :mod:`handlers.routes`).  The steps keep one order everywhere: who
is calling, does the budget allow it, may they, is the input valid, do it.

Every ``{userId}`` taken from a path is checked with
:func:`~core.domain.validation.check_user_id` before it reaches a query: an
id no user can have (a control character, over 128 characters) is a 422,
where PostgreSQL would otherwise refuse the parameter (NUL) and answer a 500.
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
from handlers.call import Answer, Call, cookie_header


async def login(call: Call) -> Answer:
    """``POST /api/v1/auth/login``: password -> token and HttpOnly cookie."""
    body = call.json_body()
    user_id, password = body.get("userId"), body.get("password")
    if not isinstance(user_id, str) or not user_id or not isinstance(password, str) or not password:
        raise ValidationError("userId and password must be non-empty strings")
    result = await call.deps.service.login(user_id, password)
    cookie = cookie_header("access_token", result["token"], result["expiresIn"], call.deps.config.cookie_secure)
    return Answer.json(result, headers={"Set-Cookie": cookie})


async def logout(call: Call) -> Answer:
    """``POST /api/v1/auth/logout``: clear the cookie.

    No credential is read, but a logout carrying the cookie (and no
    ``Authorization``) is a cookie write like any other: another page of
    the same site must not sign the user out
    (:meth:`~handlers.call.Call.check_cookie_write`).
    """
    if "Authorization" not in call.headers and call.cookie("access_token"):
        call.check_cookie_write()
    return Answer(204, headers={"Set-Cookie": cookie_header("access_token", "", 0, call.deps.config.cookie_secure)})


async def stream_ticket(call: Call) -> Answer:
    """``POST /api/v1/auth/stream-ticket``: a one-time credential for the caller's own stream."""
    principal = await call.principal()
    call.spend_write(principal)
    return Answer.json(await call.deps.service.issue_ticket(principal))


async def list_notifications(call: Call, user_id: str) -> Answer:
    """``GET .../notifications``: a page, newest first."""
    principal = await call.principal()
    require_reader(principal, check_user_id(user_id))
    limit = parse_limit(call.query_argument("limit"))
    before = call.query_argument("before")
    unread = parse_bool("unread", call.query_argument("unread"))
    return Answer.json(await call.deps.service.list_notifications(principal, user_id, limit, before, unread))


async def create_notification(call: Call, user_id: str) -> Answer:
    """``POST .../notifications``: store a notification, then push it to the user's devices."""
    principal = await call.principal()
    call.spend_publish(principal)
    require_creator(principal, check_user_id(user_id))
    fields = validate_notification(call.json_body())
    origin = call.headers.get("X-Connection-Id") or None
    notification = await call.deps.service.create_notification(principal, user_id, fields, origin)
    location = "/api/v1/users/{}/notifications/{}".format(
        urllib.parse.quote(user_id, safe=""), notification["notificationId"]
    )
    return Answer.json(notification, 201, {"Location": location})


async def unread_count(call: Call, user_id: str) -> Answer:
    """``GET .../notifications/unread-count``."""
    principal = await call.principal()
    check_user_id(user_id)
    return Answer.json({"unreadCount": await call.deps.service.unread_count(principal, user_id)})


async def read_all(call: Call, user_id: str) -> Answer:
    """``POST .../notifications/read-all``: mark every notification read."""
    principal = await call.principal()
    call.spend_write(principal)
    check_user_id(user_id)
    return Answer.json(await call.deps.service.read_all(principal, user_id))


async def get_notification(call: Call, user_id: str, notification_id: str) -> Answer:
    """``GET .../notifications/{notificationId}``."""
    principal = await call.principal()
    check_user_id(user_id)
    return Answer.json(await call.deps.service.get_notification(principal, user_id, notification_id))


async def set_read(call: Call, user_id: str, notification_id: str) -> Answer:
    """``PATCH .../notifications/{notificationId}``: set the read state; the user's other devices are told."""
    principal = await call.principal()
    call.spend_write(principal)
    require_reader(principal, check_user_id(user_id))
    read = validate_read_flag(call.json_body())
    return Answer.json(await call.deps.service.set_read(principal, user_id, notification_id, read))


async def delete_notification(call: Call, user_id: str, notification_id: str) -> Answer:
    """``DELETE .../notifications/{notificationId}``; the user's devices are told."""
    principal = await call.principal()
    call.spend_write(principal)
    check_user_id(user_id)
    await call.deps.service.delete(principal, user_id, notification_id)
    return Answer(204)


async def publish_event(call: Call) -> Answer:
    """``POST /api/v1/events``: store and push one named event to each listed user."""
    principal = await call.principal()
    call.spend_publish(principal)
    require_event_publisher(principal)
    name, user_ids, data = validate_event(call.json_body())
    published = await call.deps.service.publish_event(principal, name, user_ids, data)
    return Answer.json({"published": published}, 202)
