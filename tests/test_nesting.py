"""How deep a request body may nest (README, "Limits").

- ``data`` of a notification or an event nests at most ``MAX_DATA_DEPTH``
  (32) levels of objects and arrays, itself the first: 32 is stored, 33 is
  422 ``validation_error`` naming the limit;
- a value nested hundreds or thousands of levels deep (as deep as 8 KiB of
  ``[`` allows, and deeper), in ``data`` or in any other field, is 422 too:
  never a 500 (the JSON encoder's recursion limit) nor a 400;
- a field of the wrong shape (``message`` or ``userIds`` as nested lists)
  gets the usual 422 for that field, however deep it nests.

Every test runs through both doors (``BOTH_DOORS``).  Bodies are written as
text, since the test's own ``json.dumps`` could not encode the deepest.
"""

from __future__ import annotations

import json

import pytest

from core.domain.validation import MAX_BODY_DEPTH, MAX_DATA_DEPTH
from tests.support.checks import assert_error

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

EVENTS = "/api/v1/events"
JSON = {"Content-Type": "application/json"}
#: Levels of arrays that 8 KiB of ``[`` and ``]`` holds (with the ``{"a":}`` around them).
DEEPEST_WITHIN_8_KIB = (8 * 1024 - len('{"a":}')) // 2
#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True


def objects(levels: int) -> str:
    """JSON text of ``levels`` objects nested in each other: ``{"a":{"a":{}}}``."""
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


def arrays_in_an_object(levels: int) -> str:
    """JSON text of an object holding ``levels - 1`` nested arrays: ``{"a":[[]]}``."""
    return '{"a":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def lists(levels: int, innermost: str = '"x"') -> str:
    """JSON text of ``levels`` nested arrays around ``innermost``."""
    return "[" * levels + innermost + "]" * levels


def notification(data: str) -> bytes:
    """A notification body whose ``data`` is the JSON text ``data``."""
    return ('{"type":"info","message":"deep","data":' + data + "}").encode()


def event(data: str) -> bytes:
    """An event body for alice whose ``data`` is the JSON text ``data``."""
    return ('{"event":"deep.data","userIds":["alice"],"data":' + data + "}").encode()


async def create(server, body: bytes):
    """``POST`` alice's notification ``body``; the raw response."""
    return await server.request("POST", "/api/v1/users/alice/notifications", body, headers=JSON, as_user="alice")


async def publish(server, body: bytes):
    """``POST /api/v1/events`` as a publisher; the raw response."""
    return await server.request("POST", EVENTS, body, headers=JSON, as_user="billing", role="publisher")


def assert_too_deep(response, limit: int) -> None:
    """A 422 ``validation_error`` whose message names ``limit``."""
    error = assert_error(response, 422, "validation_error")
    assert f"{limit} levels" in error["message"], error


# -- data ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [objects, arrays_in_an_object], ids=["objects", "arrays"])
async def test_notification_data_of_32_levels_is_stored(server, shape):
    status, _, created, raw = await create(server, notification(shape(MAX_DATA_DEPTH)))
    assert status == 201, raw
    assert created["data"] == json.loads(shape(MAX_DATA_DEPTH))


@pytest.mark.parametrize("shape", [objects, arrays_in_an_object], ids=["objects", "arrays"])
async def test_notification_data_of_33_levels_is_422_naming_the_limit(server, shape):
    assert_too_deep(await create(server, notification(shape(MAX_DATA_DEPTH + 1))), MAX_DATA_DEPTH)


#: 945 levels: about as deep as the parser follows; the encoder, called
#: deeper in the stack, then failed with a RecursionError (a 500).
DEEP_LEVELS = {"945-deep": 945, "8-KiB-deep": DEEPEST_WITHIN_8_KIB, "5000-deep": 5000}


@pytest.mark.parametrize("levels", list(DEEP_LEVELS.values()), ids=list(DEEP_LEVELS))
async def test_notification_data_thousands_of_levels_deep_is_422_not_500(server, levels):
    response = await create(server, notification(arrays_in_an_object(levels)))
    assert_error(response, 422, "validation_error")
    _, _, page, _ = await server.request("GET", "/api/v1/users/alice/notifications", as_user="alice")
    assert page["items"] == []


@pytest.mark.parametrize("shape", [objects, arrays_in_an_object], ids=["objects", "arrays"])
async def test_event_data_of_32_levels_is_published(server, shape):
    client = await server.live_stream("alice")
    status, _, answer, raw = await publish(server, event(shape(MAX_DATA_DEPTH)))
    assert status == 202, raw
    assert answer == {"published": 1}
    delivered = await client.next_event()
    assert delivered.type == "deep.data"
    assert delivered.json() == json.loads(shape(MAX_DATA_DEPTH))
    client.close()


@pytest.mark.parametrize("shape", [objects, arrays_in_an_object], ids=["objects", "arrays"])
async def test_event_data_of_33_levels_is_422_naming_the_limit(server, shape):
    assert_too_deep(await publish(server, event(shape(MAX_DATA_DEPTH + 1))), MAX_DATA_DEPTH)


@pytest.mark.parametrize("levels", list(DEEP_LEVELS.values()), ids=list(DEEP_LEVELS))
async def test_event_data_thousands_of_levels_deep_is_422_not_500(server, levels):
    assert_error(await publish(server, event(arrays_in_an_object(levels))), 422, "validation_error")


# -- every other field -----------------------------------------------------------

#: Notification fields given as nested lists: over data's limit but within
#: the body's, and thousands of levels deep.
OTHER_NOTIFICATION_FIELDS = ("type", "message", "actionUrl", "sourceType", "someUnknownField")


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 5000], ids=["33-deep", "5000-deep"])
@pytest.mark.parametrize("field", OTHER_NOTIFICATION_FIELDS)
async def test_a_deeply_nested_notification_field_is_422_not_500(server, field, levels):
    fields = {"type": '"info"', "message": '"hi"', field: lists(levels)}
    body = ("{" + ",".join(f'"{name}":{value}' for name, value in fields.items()) + "}").encode()
    response = await create(server, body)
    if field == "someUnknownField" and levels <= MAX_BODY_DEPTH:
        # Unknown fields are ignored, as long as the body stays within its depth.
        assert response[0] == 201, response[3]
    else:
        assert_error(response, 422, "validation_error")


async def test_a_body_nested_past_its_limit_is_422_naming_the_limit(server):
    body = ('{"type":"info","message":"hi","someUnknownField":' + lists(MAX_BODY_DEPTH) + "}").encode()
    assert_too_deep(await create(server, body), MAX_BODY_DEPTH)


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 5000], ids=["33-deep", "5000-deep"])
@pytest.mark.parametrize("where", ["user-ids", "one-user-id", "event-name"])
async def test_a_deeply_nested_event_field_is_422_not_500(server, where, levels):
    fields = {"event": '"deep.data"', "userIds": '["alice"]'}
    if where == "user-ids":
        fields["userIds"] = lists(levels, '"alice"')
    elif where == "one-user-id":
        fields["userIds"] = '["alice",' + lists(levels, '"bob"') + "]"
    else:
        fields["event"] = lists(levels)
    body = ("{" + ",".join(f'"{name}":{value}' for name, value in fields.items()) + "}").encode()
    assert_error(await publish(server, body), 422, "validation_error")


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 5000], ids=["33-deep", "5000-deep"])
@pytest.mark.parametrize("field", ["userId", "password"])
async def test_a_deeply_nested_login_field_is_422_not_500(server, field, levels):
    fields = {"userId": '"alice"', "password": '"pw"', field: lists(levels)}
    body = ("{" + ",".join(f'"{name}":{value}' for name, value in fields.items()) + "}").encode()
    assert_error(await server.request("POST", "/api/v1/auth/login", body, headers=JSON), 422, "validation_error")


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 5000], ids=["33-deep", "5000-deep"])
async def test_a_deeply_nested_read_flag_is_422_not_500(server, levels):
    created = await server.notify("alice")
    path = f"/api/v1/users/alice/notifications/{created['notificationId']}"
    body = ('{"read":' + lists(levels, "true") + "}").encode()
    assert_error(await server.request("PATCH", path, body, headers=JSON, as_user="alice"), 422, "validation_error")


async def test_a_deep_body_with_an_escape_is_422_not_500(server):
    # A \u escape makes the server re-encode the whole body (to catch lone
    # surrogates): the depth must be refused before that.
    body = ('{"type":"info","message":"caf\\u00e9","someUnknownField":' + lists(900) + "}").encode()
    assert_too_deep(await create(server, body), MAX_BODY_DEPTH)
