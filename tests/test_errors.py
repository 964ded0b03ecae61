"""The contract's "Errors" section: every error is the one JSON shape.

``{"error": {"code": "<snake_case>", "message": "<human text>"}}`` with the
fitting status: 404 for unknown paths (whatever the method), 405 with the
code ``method_not_allowed`` for a method a route does not support, and
never a 500 or a logged traceback for bad input.

`assert_error` is the one checker of that shape; the other API test modules
import it from here.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

#: A snake_case error code: lowercase words joined by single underscores.
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def assert_error(response: tuple[int, Any, Any, bytes], status: int, code: str | None = None) -> dict[str, str]:
    """Check that ``response`` is the contract's error body with ``status``.

    :param response: what ``Server.request`` returned.
    :param code: the exact error code, when the test pins one.
    :returns: the ``error`` object, for further checks.
    """
    got, headers, body, raw = response
    assert got == status, (got, raw)
    assert headers.get("Content-Type", "").startswith("application/json"), headers.get("Content-Type")
    assert isinstance(body, dict) and set(body) == {"error"}, raw
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, raw
    assert isinstance(error["code"], str) and SNAKE_CASE.fullmatch(error["code"]), raw
    assert isinstance(error["message"], str) and error["message"].strip(), raw
    if code is not None:
        assert error["code"] == code, raw
    return error


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


#: Bad requests from every section, each with the status the contract gives it.
#: ``(label, method, path, body, headers, status)``; all are sent as ``alice``.
NOTIFICATIONS = "/api/v1/users/alice/notifications"
BAD_REQUESTS: list[tuple[str, str, str, Any, dict[str, str], int]] = [
    ("invalid json", "POST", NOTIFICATIONS, b"{", {"Content-Type": "application/json"}, 400),
    ("invalid utf-8", "POST", NOTIFICATIONS, b'{"type":"info","message":"\xff"}', {"Content-Type": "application/json"}, 400),
    ("text/plain body", "POST", NOTIFICATIONS, b'{"type":"info","message":"x"}', {"Content-Type": "text/plain"}, 415),
    ("array body", "POST", NOTIFICATIONS, [1, 2], {}, 422),
    ("lone surrogate message", "POST", NOTIFICATIONS, b'{"type":"info","message":"\\ud800"}', {"Content-Type": "application/json"}, 400),
    ("lone surrogate data", "POST", NOTIFICATIONS, b'{"type":"info","message":"x","data":{"\\udc00":1}}', {"Content-Type": "application/json"}, 400),
    ("deeply nested json", "POST", NOTIFICATIONS, b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}, 400),
    ("null body", "POST", NOTIFICATIONS, b"null", {"Content-Type": "application/json"}, 422),
    ("empty body", "POST", NOTIFICATIONS, b"", {"Content-Type": "application/json"}, 400),
    ("bad type", "POST", NOTIFICATIONS, {"type": "fatal", "message": "x"}, {}, 422),
    ("message object", "POST", NOTIFICATIONS, {"type": "info", "message": {"a": 1}}, {}, 422),
    ("data list", "POST", NOTIFICATIONS, {"type": "info", "message": "x", "data": [1]}, {}, 422),
    ("actionUrl number", "POST", NOTIFICATIONS, {"type": "info", "message": "x", "actionUrl": 5}, {}, 422),
    ("actionUrl bad port", "POST", NOTIFICATIONS, {"type": "info", "message": "x", "actionUrl": "http://x.example:99999/"}, {}, 422),
    ("actionUrl bad ipv6", "POST", NOTIFICATIONS, {"type": "info", "message": "x", "actionUrl": "http://[::1/"}, {}, 422),
    ("sourceType list", "POST", NOTIFICATIONS, {"type": "info", "message": "x", "sourceType": ["A"]}, {}, 422),
    ("limit zero", "GET", NOTIFICATIONS + "?limit=0", None, {}, 400),
    ("limit huge", "GET", NOTIFICATIONS + "?limit=99999999999999999999", None, {}, 400),
    ("before unknown", "GET", NOTIFICATIONS + "?before=ntf_nope", None, {}, 400),
    ("unread maybe", "GET", NOTIFICATIONS + "?unread=maybe", None, {}, 400),
    ("patch read string", "PATCH", NOTIFICATIONS + "/ntf_nope", {"read": "yes"}, {}, 422),
    ("patch invalid json", "PATCH", NOTIFICATIONS + "/ntf_nope", b"{", {"Content-Type": "application/json"}, 400),
    ("patch unknown", "PATCH", NOTIFICATIONS + "/ntf_nope", {"read": True}, {}, 404),
    ("delete unknown", "DELETE", NOTIFICATIONS + "/ntf_nope", None, {}, 404),
    ("get unknown", "GET", NOTIFICATIONS + "/ntf_nope", None, {}, 404),
    ("event reserved", "POST", "/api/v1/events", {"event": "ready", "userIds": ["bob"]}, {}, 400),
    ("event bad name", "POST", "/api/v1/events", {"event": "Bad Name", "userIds": ["bob"]}, {}, 422),
    ("event no users", "POST", "/api/v1/events", {"event": "x", "userIds": []}, {}, 422),
    ("event invalid json", "POST", "/api/v1/events", b"[", {"Content-Type": "application/json"}, 400),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_input_answers_its_status_and_logs_no_error(server, caplog, method, path, body, headers, status):
    caplog.set_level(logging.INFO)
    role = "publisher" if path == "/api/v1/events" else "user"
    response = await server.request(method, path, body, headers=headers, as_user="alice", role=role)
    assert_error(response, status)
    failures = [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert not failures, [record.getMessage() for record in failures]
