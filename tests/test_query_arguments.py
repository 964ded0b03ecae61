"""Query arguments that are not UTF-8 once percent-decoded.

Every query argument a handler reads is decoded in one place
(``BaseHandler.decode_argument``): one that is not UTF-8 gets the JSON 400
``invalid_query`` whose message names the argument but never quotes its
value, because ``?ticket=`` and ``?token=`` carry credentials (Tornado's own
answer quoted the first bytes).  The stream's ``ticket`` and ``token`` get
that 400 too, not a 401: the request is malformed before any credential
is looked at.  A path segment that is not UTF-8 is 400 ``invalid_path``.

Only the handlers read these: the stream's fast lane never takes a query
with a ``%`` in it, and a create with any query string goes to the handler
(which reads no query argument).  Raw non-ASCII bytes in a request target
never reach either door: the connection layer refuses them (400
``bad_request``).
"""

from __future__ import annotations

import logging

import pytest

from tests.support.checks import assert_error, assert_error_body

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

#: Not UTF-8 (0xFF, 0xFE), around a marker that must appear nowhere.
MARKER = "leakmarker"
BAD_VALUE = f"%FF%FE{MARKER}%C3"


def assert_value_not_shown(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """Neither the answer nor any log line shows any part of the value."""
    for shown in (raw.decode("latin-1"), caplog.text):
        assert MARKER not in shown
        assert "\\xff" not in shown.lower() and "%ff" not in shown.lower()


@pytest.mark.parametrize("name", ["ticket", "token"])
async def test_a_stream_credential_that_is_not_utf8_is_400_invalid_query_without_its_value(server, caplog, name):
    caplog.set_level(logging.DEBUG)
    client = await server.stream("alice", query=f"{name}={BAD_VALUE}", auth=False)
    error = assert_error_body(client.status, client.body_bytes, 400, "invalid_query")
    assert name in error["message"]
    assert_value_not_shown(client.body_bytes, caplog)
    client.close()


async def test_a_last_event_id_that_is_not_utf8_is_treated_as_absent_without_its_value_shown(server, caplog):
    # The contract: a malformed Last-Event-ID is treated as absent.
    caplog.set_level(logging.DEBUG)
    client = await server.stream("alice", query=f"lastEventId={BAD_VALUE}")
    assert client.status == 200
    assert (await client.next_event()).type == "ready"
    client.close()
    assert_value_not_shown(b"", caplog)


@pytest.mark.parametrize("name", ["limit", "before", "unread"])
async def test_a_list_argument_that_is_not_utf8_is_400_invalid_query_without_its_value(server, caplog, name):
    caplog.set_level(logging.DEBUG)
    response = await server.request("GET", f"/api/v1/users/alice/notifications?{name}={BAD_VALUE}", as_user="alice")
    error = assert_error(response, 400, "invalid_query")
    assert name in error["message"]
    assert_value_not_shown(response[3], caplog)


@pytest.mark.parametrize("name", ["scope", "detail"])
async def test_a_stats_argument_that_is_not_utf8_is_400_invalid_query_without_its_value(server, caplog, name):
    caplog.set_level(logging.DEBUG)
    response = await server.request("GET", f"/api/v1/stats?{name}={BAD_VALUE}")
    error = assert_error(response, 400, "invalid_query")
    assert name in error["message"]
    assert_value_not_shown(response[3], caplog)


async def test_a_path_segment_that_is_not_utf8_is_400_invalid_path_without_its_value(server, caplog):
    caplog.set_level(logging.DEBUG)
    response = await server.request("GET", f"/api/v1/users/{BAD_VALUE}/notifications", as_user="alice")
    assert_error(response, 400, "invalid_path")
    assert MARKER not in response[3].decode("latin-1")


async def test_an_argument_no_handler_reads_may_be_anything(server):
    status, _, body, raw = await server.request("GET", f"/api/v1/users/alice/notifications?x={BAD_VALUE}",
                                                as_user="alice")
    assert status == 200, raw
    assert body["items"] == []


async def test_the_bearer_credential_is_read_before_a_stream_query_credential(server):
    # With an Authorization header, ?token= is never decoded.
    client = await server.live_stream("alice", query=f"token={BAD_VALUE}")
    client.close()


async def test_raw_non_ascii_bytes_in_the_query_are_refused_by_the_connection_layer(server, caplog):
    caplog.set_level(logging.DEBUG)
    client = await server.stream("alice", query=f"token=\u00ff\u00fe{MARKER}", auth=False)
    assert_error_body(client.status, client.body_bytes, 400, "bad_request")
    assert MARKER not in client.body_bytes.decode("latin-1") and MARKER not in caplog.text
    client.close()
