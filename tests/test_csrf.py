"""Cross-site writes with the cookie: the contract's rule, route by route.

``SameSite=Lax`` keeps the ``access_token`` cookie off another *site*'s
writes, but a sibling subdomain is the same site, and its page could post a
form to the API with the user's cookie.  So a write (POST, PATCH, DELETE)
that the cookie alone authenticates is refused with 403
``cross_site_request`` unless it says it comes from the server's own pages
(``Origin`` naming the ``Host`` it was sent to, or ``Sec-Fetch-Site:
same-origin``) or from an origin listed in ``--cors-origins``, and unless
its body, if any, is JSON.  Clients sending ``Authorization`` are never
affected.  Logout reads no credential, but the rule applies when it carries
the cookie and no ``Authorization``.

What each bad request gets:

- foreign ``Origin``, no ``Origin``, ``Origin: null``, ``Sec-Fetch-Site:
  same-site`` (a sibling subdomain), an origin allowed only through ``*``:
  403 ``cross_site_request``, and nothing changes;
- a form body from the server's own page: 403 ``cross_site_request``, not
  415: the rule is applied where the credential is chosen, before any body
  is parsed, and the contract states it as one refusal ("refused with 403
  unless ... its body, if any, is JSON"); the same body with
  ``Authorization`` is the usual 415;
- a form post to login (which reads no credential): 415
  ``unsupported_media_type``, from any origin.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.support.checks import assert_error

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

#: Another origin: a sibling subdomain's page, as far as the server can tell.
EVIL = "https://evil.example"
#: An origin a deployment lists in ``--cors-origins``.
APP = "https://app.example"
NOTIFICATIONS = "/api/v1/users/alice/notifications"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

#: ``(method, path, JSON body or None, success status, cookie's user, its role)``.
Write = tuple[str, str, Any, int, str, str]


async def mark_read(server) -> Write:
    created = await server.notify("alice")
    return "PATCH", f"{NOTIFICATIONS}/{created['notificationId']}", {"read": True}, 200, "alice", "user"


async def delete(server) -> Write:
    created = await server.notify("alice")
    return "DELETE", f"{NOTIFICATIONS}/{created['notificationId']}", None, 204, "alice", "user"


async def read_all(server) -> Write:
    await server.notify("alice")
    return "POST", f"{NOTIFICATIONS}/read-all", None, 200, "alice", "user"


async def stream_ticket(server) -> Write:
    return "POST", "/api/v1/auth/stream-ticket", None, 200, "alice", "user"


async def logout(server) -> Write:
    return "POST", "/api/v1/auth/logout", None, 204, "alice", "user"


async def create_notification(server) -> Write:
    return "POST", NOTIFICATIONS, {"type": "info", "message": "hi"}, 201, "alice", "user"


async def publish_event(server) -> Write:
    return "POST", "/api/v1/events", {"event": "build.done", "userIds": ["alice"], "data": {}}, 202, "svc", "publisher"


#: Every write a cookie can make, by name.
WRITES: dict[str, Callable[[Any], Awaitable[Write]]] = {
    "mark read": mark_read,
    "delete": delete,
    "read-all": read_all,
    "stream-ticket": stream_ticket,
    "logout": logout,
    "create notification": create_notification,
    "publish event (publisher cookie)": publish_event,
}

every_write = pytest.mark.parametrize("name", list(WRITES))


def cookie(server, user_id: str, role: str) -> dict[str, str]:
    """The ``access_token`` cookie of a valid token."""
    return {"Cookie": f"access_token={server.token(user_id, role)}"}


async def cookie_write(server, name: str, headers: dict[str, str], body: Any = ...) -> tuple[Any, int]:
    """Make write ``name`` with the cookie alone plus ``headers``; ``(response, success status)``.

    :param body: replaces the write's own body when given.
    """
    method, path, own_body, ok, user_id, role = await WRITES[name](server)
    response = await server.request(method, path, own_body if body is ... else body,
                                    headers={**cookie(server, user_id, role), **headers})
    return response, ok


# -- refused ----------------------------------------------------------------------------


@every_write
async def test_a_cookie_write_from_a_foreign_origin_is_403(server, name):
    response, _ = await cookie_write(server, name, {"Origin": EVIL})
    error = assert_error(response, 403, "cross_site_request")
    assert "Authorization" in error["message"]


@every_write
async def test_a_cookie_write_without_an_origin_is_403(server, name):
    response, _ = await cookie_write(server, name, {})
    assert_error(response, 403, "cross_site_request")


@every_write
async def test_a_form_body_from_the_servers_own_origin_is_403(server, name):
    # 403, not 415: the body rule is part of the cross-site rule, checked
    # where the cookie is chosen, before any body is parsed.
    response, _ = await cookie_write(server, name, {"Origin": server.origin, **FORM}, body=b"read=true")
    error = assert_error(response, 403, "cross_site_request")
    assert "application/json" in error["message"]


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site", "Origin": EVIL},
     {"Origin": "https://evil.127.0.0.1"}, {"Origin": "127.0.0.1"}],
    ids=["origin null", "same-site sibling", "cross-site", "lookalike host", "no scheme"],
)
async def test_a_cookie_write_from_anything_but_a_trusted_page_is_403(server, headers):
    response, _ = await cookie_write(server, "stream-ticket", headers)
    assert_error(response, 403, "cross_site_request")


async def test_an_origin_allowed_only_through_star_may_not_write_with_the_cookie(make_server):
    # '*' lets any page call the API without credentials, never with them.
    server = await make_server(cors_origins="*")
    response, _ = await cookie_write(server, "stream-ticket", {"Origin": EVIL})
    assert_error(response, 403, "cross_site_request")


async def test_a_refused_cookie_delete_leaves_the_notification(server):
    created = await server.notify("alice")
    path = f"{NOTIFICATIONS}/{created['notificationId']}"
    assert_error(await server.request("DELETE", path, headers={**cookie(server, "alice", "user"), "Origin": EVIL}),
                 403, "cross_site_request")
    status, _, body, _ = await server.request("GET", path, as_user="alice")
    assert status == 200 and body["readAt"] is None


async def test_a_refused_cookie_read_all_leaves_everything_unread(server):
    await server.notify("alice")
    response, _ = await cookie_write(server, "read-all", {"Origin": EVIL})
    assert_error(response, 403, "cross_site_request")
    status, _, body, _ = await server.request("GET", f"{NOTIFICATIONS}/unread-count", as_user="alice")
    assert (status, body["unreadCount"]) == (200, 2)


async def test_a_refused_logout_keeps_the_cookie(server):
    response, _ = await cookie_write(server, "logout", {"Origin": EVIL})
    assert_error(response, 403, "cross_site_request")
    assert "Set-Cookie" not in response[1]


# -- allowed ----------------------------------------------------------------------------


@every_write
async def test_a_cookie_write_from_the_servers_own_origin_succeeds(server, name):
    (status, _, _, raw), ok = await cookie_write(server, name, {"Origin": server.origin})
    assert status == ok, raw


@every_write
async def test_a_cookie_write_with_sec_fetch_site_same_origin_and_no_origin_succeeds(server, name):
    (status, _, _, raw), ok = await cookie_write(server, name, {"Sec-Fetch-Site": "same-origin"})
    assert status == ok, raw


@every_write
async def test_a_cookie_write_from_an_origin_in_cors_origins_succeeds(make_server, name):
    server = await make_server(cors_origins=f"{APP},http://localhost:3000")
    (status, _, _, raw), ok = await cookie_write(server, name, {"Origin": APP})
    assert status == ok, raw


@every_write
async def test_authorization_with_a_foreign_origin_is_unaffected_even_beside_the_cookie(server, name):
    method, path, body, ok, user_id, role = await WRITES[name](server)
    headers = {**server.auth(user_id, role), **cookie(server, user_id, role), "Origin": EVIL}
    status, _, _, raw = await server.request(method, path, body, headers=headers)
    assert status == ok, raw


async def test_a_bearer_create_from_a_foreign_origin_is_unaffected(server):
    status, _, _, raw = await server.request("POST", NOTIFICATIONS, {"type": "info", "message": "hi"},
                                             headers={"Origin": EVIL}, as_user="alice")
    assert status == 201, raw


async def test_a_bearer_write_with_a_form_body_is_the_usual_415(server):
    created = await server.notify("alice")
    response = await server.request("PATCH", f"{NOTIFICATIONS}/{created['notificationId']}", b"read=true",
                                    headers={"Origin": EVIL, **FORM}, as_user="alice")
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("notify.example", "https://notify.example"),
        ("notify.example", "https://notify.example:443"),
        ("notify.example:443", "https://notify.example"),
        ("notify.example", "http://notify.example:80"),
        ("Notify.Example:8443", "https://notify.example:8443"),
        ("[::1]:8888", "http://[::1]:8888"),
    ],
)
async def test_the_servers_own_origin_is_its_host_header_without_default_ports(server, host, origin):
    # Behind a proxy, the Host the proxy passes on (deploy/nginx.conf:
    # $http_host) is the one the browser's page came from.
    (status, _, _, raw), ok = await cookie_write(server, "stream-ticket", {"Host": host, "Origin": origin})
    assert status == ok, raw


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("notify.example", "https://notify.example:8443"),
        ("notify.example:8443", "https://notify.example"),
        ("notify.example", "https://api.notify.example"),
        ("api.notify.example", "https://notify.example"),
    ],
)
async def test_another_port_or_subdomain_of_the_host_is_a_foreign_origin(server, host, origin):
    response, _ = await cookie_write(server, "stream-ticket", {"Host": host, "Origin": origin})
    assert_error(response, 403, "cross_site_request")


async def test_a_cookie_read_from_a_foreign_origin_is_unaffected(server):
    # Reads change nothing; CORS decides whether the page may see them.
    status, _, _, raw = await server.request("GET", NOTIFICATIONS, headers={**cookie(server, "alice", "user"),
                                                                            "Origin": EVIL})
    assert status == 200, raw


async def test_a_logout_without_the_cookie_needs_no_origin(server):
    status, _, _, raw = await server.request("POST", "/api/v1/auth/logout", headers={"Origin": EVIL})
    assert status == 204, raw


# -- login ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["foreign", "own"])
async def test_a_form_post_to_login_is_415(server, page):
    await server.app.service.create_user("alice", "pw-alice-123")
    body = urllib.parse.urlencode({"userId": "alice", "password": "pw-alice-123"}).encode()
    headers = {**FORM, "Origin": EVIL if page == "foreign" else server.origin}
    response = await server.request("POST", "/api/v1/auth/login", body, headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    assert "Set-Cookie" not in response[1]
