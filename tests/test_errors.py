"""The contract's "Errors" section: every error is the one JSON shape.

``{"error": {"code": "<snake_case>", "message": "<human text>"}}`` with the
fitting status: 404 for unknown paths (whatever the method), 405 with the
code ``method_not_allowed`` for a method a route does not support, and
never a 500 or a logged traceback for bad input.

`assert_error` (tests/support/checks.py) is the one checker of that shape and
`no_error_logged` (conftest.py) the fixture that fails a test whose handling
logged an error.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.checks import assert_error

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nothing-here",
        "/api/v2/users/alice/notifications",
        "/api/v1/users/alice/notifications/ntf_1/extra",
        "/favicon.ico",
    ],
)
async def test_unknown_path_answers_json_404(server, path):
    assert_error(await server.request("GET", path, as_user="alice"), 404, "not_found")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_unknown_path_answers_404_whatever_the_method(server, method):
    response = await server.request(method, "/api/v1/nothing-here", {"a": 1}, as_user="alice")
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/users/alice/notifications"),
        ("DELETE", "/api/v1/users/alice/notifications"),
        ("DELETE", "/api/v1/stats"),
        ("POST", "/api/v1/stats"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/users/alice/notifications/unread-count"),
        ("GET", "/api/v1/users/alice/notifications/read-all"),
        ("PUT", "/api/v1/users/alice/notifications/ntf_1"),
        ("POST", "/api/v1/users/alice/notifications/stream"),
        ("GET", "/api/v1/auth/login"),
    ],
)
async def test_unsupported_method_answers_json_405(server, method, path):
    response = await server.request(method, path, {"a": 1} if method != "GET" else None, as_user="alice")
    assert_error(response, 405, "method_not_allowed")


async def test_unsupported_method_answers_405_without_a_credential(server):
    response = await server.request("PUT", "/api/v1/users/alice/notifications", {"type": "info", "message": "x"})
    assert_error(response, 405, "method_not_allowed")


#: Odd inputs not covered by the other modules' tests, with the status the
#: contract gives each: ``(label, method, path, body, headers, status)``.
#: All are sent as ``alice``; those to ``/api/v1/events`` as a publisher.
NOTIFICATIONS = "/api/v1/users/alice/notifications"
RAW_JSON = {"Content-Type": "application/json"}
ODD_INPUTS: list[tuple[str, str, str, Any, dict[str, str], int]] = [
    ("null body", "POST", NOTIFICATIONS, b"null", RAW_JSON, 422),
    ("lone surrogate in message", "POST", NOTIFICATIONS, b'{"type":"info","message":"\\ud800"}', RAW_JSON, 400),
    ("lone surrogate in data key", "POST", NOTIFICATIONS, b'{"type":"info","message":"x","data":{"\\udc00":1}}', RAW_JSON, 400),
    ("lone surrogate in event data", "POST", "/api/v1/events", b'{"event":"x","userIds":["bob"],"data":{"a":"\\ud800"}}', RAW_JSON, 400),
    # Over the body's depth limit (README, Limits): 422, like any limit.
    ("nesting deeper than a parser follows", "POST", NOTIFICATIONS, b"[" * 100_000 + b"]" * 100_000, RAW_JSON, 422),
    ("actionUrl with port over 65535", "POST", NOTIFICATIONS, {"type": "info", "message": "x", "actionUrl": "http://x.example:99999/"}, {}, 422),
    ("actionUrl with broken IPv6 host", "POST", NOTIFICATIONS, {"type": "info", "message": "x", "actionUrl": "http://[::1/"}, {}, 422),
    ("limit of twenty digits", "GET", NOTIFICATIONS + "?limit=99999999999999999999", None, {}, 400),
    ("path user id not UTF-8", "GET", "/api/v1/users/%ff/notifications", None, {}, 400),
    ("patch body not JSON", "PATCH", NOTIFICATIONS + "/ntf_nope", b"{", RAW_JSON, 400),
    ("event body not JSON", "POST", "/api/v1/events", b"[", RAW_JSON, 400),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [case[1:] for case in ODD_INPUTS],
    ids=[case[0] for case in ODD_INPUTS],
)
async def test_odd_input_answers_its_status_not_500(server, method, path, body, headers, status):
    role = "publisher" if path == "/api/v1/events" else "user"
    response = await server.request(method, path, body, headers=headers, as_user="alice", role=role)
    assert_error(response, status)
