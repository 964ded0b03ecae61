"""CORS: which browser origins may call the API (``--cors-origins``).

- Empty (the default): no CORS header on any response; ``OPTIONS`` is 405.
- Listed origins: that exact origin is echoed, with credentials and
  ``Vary: Origin``, on every API response (errors and the stream too);
  a preflight gets 204 with the methods and headers allowed; an origin not
  on the list gets no CORS headers, and 403 for a preflight.
- ``*``: any origin, never with credentials.
"""

from __future__ import annotations

import pytest

from tests.support.checks import assert_error

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

APP = "https://app.example"
NOTIFICATIONS = "/api/v1/users/alice/notifications"


def cors_headers(headers) -> dict[str, str]:
    """The ``Access-Control-*`` headers of a response."""
    return {name: value for name, value in headers.get_all() if name.lower().startswith("access-control-")}


def preflight(method: str = "POST", headers: str = "authorization,content-type", origin: str | None = APP) -> dict[str, str]:
    """The headers a browser sends with a preflight ``OPTIONS``."""
    sent = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}
    if origin is not None:
        sent["Origin"] = origin
    return sent


@pytest.fixture
def cors_server(make_server):
    """``await cors_server()``: a server allowing :data:`APP` and a local dev origin."""
    return lambda: make_server(cors_origins=f"{APP},http://localhost:3000")


async def test_without_cors_origins_no_cors_header_is_sent(server):
    status, headers, _, _ = await server.request("GET", "/api/v1/stats", headers={"Origin": APP})
    assert status == 200
    assert cors_headers(headers) == {}
    assert "Vary" not in headers


async def test_without_cors_origins_a_preflight_is_405(server):
    response = await server.request("OPTIONS", NOTIFICATIONS, headers=preflight())
    assert_error(response, 405, "method_not_allowed")
    assert cors_headers(response[1]) == {}


async def test_a_listed_origin_is_echoed_with_credentials(cors_server):
    server = await cors_server()
    status, headers, _, _ = await server.request("GET", NOTIFICATIONS, headers={"Origin": APP}, as_user="alice")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "Location" in headers["Access-Control-Expose-Headers"]
    assert headers["Vary"] == "Origin"


async def test_errors_carry_cors_headers_so_the_page_can_read_them(cors_server):
    server = await cors_server()
    response = await server.request("GET", NOTIFICATIONS, headers={"Origin": "http://localhost:3000"})
    assert_error(response, 401)
    assert response[1]["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert response[1]["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize("origin", ["https://evil.example", "http://app.example", "https://app.example:8443", "https://app.example.evil.example", "null"])
async def test_an_origin_not_listed_gets_no_cors_headers(cors_server, origin):
    server = await cors_server()
    status, headers, _, _ = await server.request("GET", "/api/v1/stats", headers={"Origin": origin})
    assert status == 200
    assert cors_headers(headers) == {}
    assert headers["Vary"] == "Origin"


async def test_origin_matching_ignores_case(cors_server):
    server = await cors_server()
    _, headers, _, _ = await server.request("GET", "/api/v1/stats", headers={"Origin": "HTTPS://APP.EXAMPLE"})
    assert headers["Access-Control-Allow-Origin"] == "HTTPS://APP.EXAMPLE"


async def test_a_preflight_from_a_listed_origin_is_204_with_what_is_allowed(cors_server):
    server = await cors_server()
    status, headers, _, raw = await server.request("OPTIONS", NOTIFICATIONS, headers=preflight())
    assert status == 204 and raw == b""
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    allowed = {name.strip().lower() for name in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "last-event-id"} <= allowed
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert headers["Allow"] == "GET, POST, OPTIONS"


async def test_a_preflight_needs_no_credential(cors_server):
    server = await cors_server()
    status, headers, _, _ = await server.request("OPTIONS", "/api/v1/users/alice/notifications/n1", headers=preflight("PATCH"))
    assert status == 204
    assert headers["Access-Control-Allow-Methods"] == "GET, PATCH, DELETE, OPTIONS"


async def test_a_preflight_from_an_origin_not_listed_is_403(cors_server):
    server = await cors_server()
    response = await server.request("OPTIONS", NOTIFICATIONS, headers=preflight(origin="https://evil.example"))
    assert_error(response, 403, "origin_not_allowed")
    assert cors_headers(response[1]) == {}


async def test_a_preflight_to_an_unknown_path_is_404(cors_server):
    server = await cors_server()
    assert_error(await server.request("OPTIONS", "/api/v1/nothing", headers=preflight()), 404, "not_found")


async def test_the_stream_answers_a_listed_origin_with_credentials(cors_server):
    # EventSource(url, {withCredentials: true}) needs exactly this.
    server = await cors_server()
    stream = await server.live_stream("alice", headers={"Origin": APP})
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["Access-Control-Allow-Origin"] == APP
    assert stream.headers["Access-Control-Allow-Credentials"] == "true"
    await stream.aclose()


async def test_a_stream_preflight_allows_last_event_id(cors_server):
    server = await cors_server()
    status, headers, _, _ = await server.request("OPTIONS", NOTIFICATIONS + "/stream", headers=preflight("GET", "last-event-id"))
    assert status == 204
    assert headers["Access-Control-Allow-Methods"] == "GET, OPTIONS"
    assert "Last-Event-ID" in headers["Access-Control-Allow-Headers"]


async def test_star_allows_any_origin_without_credentials(make_server):
    server = await make_server(cors_origins="*")
    status, headers, _, _ = await server.request("GET", "/api/v1/stats", headers={"Origin": "https://anyone.example"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers
    status, headers, _, _ = await server.request("OPTIONS", NOTIFICATIONS, headers=preflight(origin="https://anyone.example"))
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers


async def test_static_files_send_no_cors_headers(cors_server):
    server = await cors_server()
    status, headers, _, _ = await server.request("GET", "/", headers={"Origin": APP})
    assert status == 200
    assert cors_headers(headers) == {}
