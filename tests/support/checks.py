"""Checks shared by the test modules: the error body, cursors, stored counts, conditions."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

#: A snake_case error code: lowercase words joined by single underscores.
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def assert_error_body(status: int, body: bytes, expected_status: int, code: str | None = None) -> dict[str, str]:
    """Check a status and body against the contract's error shape.

    ``{"error": {"code": "<snake_case>", "message": "<human text>"}}``.

    :param code: the exact error code, when the test pins one.
    :returns: the ``error`` object, for further checks.
    """
    assert status == expected_status, (status, body)
    payload = json.loads(body)
    assert isinstance(payload, dict) and set(payload) == {"error"}, body
    error = payload["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, body
    assert isinstance(error["code"], str) and SNAKE_CASE.fullmatch(error["code"]), body
    assert isinstance(error["message"], str) and error["message"].strip(), body
    if code is not None:
        assert error["code"] == code, body
    return error


def assert_error(response: tuple[int, Any, Any, bytes], status: int, code: str | None = None) -> dict[str, str]:
    """Check a ``Server.request`` response: JSON content type and the error shape."""
    got, headers, _body, raw = response
    assert headers.get("Content-Type", "").startswith("application/json"), (got, headers.get("Content-Type"))
    return assert_error_body(got, raw, status, code)


async def count_notifications(server, user_id: str = "alice") -> int:
    """How many notifications ``user_id`` has stored (up to 100), as the API lists them."""
    status, _, body, raw = await server.request("GET", f"/api/v1/users/{user_id}/notifications?limit=100", as_user=user_id)
    assert status == 200, raw
    return len(body["items"])


def cursor_of(event: Any) -> int:
    """The event's own ``id:`` as an int, checking it is a decimal integer."""
    assert event.id is not None and re.fullmatch(r"[0-9]+", event.id), event
    return int(event.id)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: Callable[[], str] | str | None = None) -> None:
    """Wait for ``condition()`` to hold, checking every 10 ms.

    Only for server-side state no client can observe as an event (e.g. the
    server noticing that a client hung up).  The state of another process
    is polled with :func:`tests.support.processes.wait_for`.

    :param what: what is awaited, for the failure message (a callable is
        called then, to describe the state at that moment).
    :raises AssertionError: if it does not hold within ``timeout`` seconds.
    """
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    if not condition():
        described = what() if callable(what) else what
        raise AssertionError(f"condition not met within {timeout} s" + (f": {described}" if described else ""))
