"""The contract's "Notifications" section, over real sockets.

``/api/v1/users/{userId}/notifications``: create (every field and every bad
input), the originator exclusion of ``X-Connection-Id``, the paged list, the
unread count, read state (``PATCH`` and ``read-all``) and delete, with the
``notification-read`` / ``notification-deleted`` events a user's other
devices receive.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

import pytest

from tests.support.checks import assert_error

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

#: ISO 8601 UTC with a trailing Z, as every time on the wire.
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z")
NOTIFICATION_KEYS = {
    "notificationId", "userId", "type", "message", "createdAt",
    "actionUrl", "sourceType", "readAt", "data",
}
JSON = {"Content-Type": "application/json"}


def path(user_id: str, *rest: str, query: str = "") -> str:
    """The notifications URL of ``user_id``, with more segments and a query."""
    url = "/api/v1/users/{}/notifications".format(urllib.parse.quote(user_id, safe=""))
    url += "".join("/" + urllib.parse.quote(part, safe="") for part in rest)
    return url + ("?" + query if query else "")


async def create(server, user_id: str, body: Any, headers: dict[str, str] | None = None):
    """``POST`` a notification for ``user_id`` as that user; the raw response."""
    return await server.request("POST", path(user_id), body, headers=headers, as_user=user_id)


async def listing(server, user_id: str, query: str = "") -> dict[str, Any]:
    """``GET`` one page of ``user_id``'s list (asserts 200)."""
    status, _, body, raw = await server.request("GET", path(user_id, query=query), as_user=user_id)
    assert status == 200, raw
    return body


async def create_many(server, user_id: str, count: int) -> list[dict[str, Any]]:
    """Create ``count`` notifications ``n0, n1, ...`` in that order."""
    return [await server.notify(user_id, f"n{index}") for index in range(count)]


async def patch_read(server, user_id: str, notification_id: str, read: Any, as_user: str | None = None):
    """``PATCH`` the read flag; the raw response."""
    return await server.request("PATCH", path(user_id, notification_id), {"read": read}, as_user=as_user or user_id)


def connection_id(client) -> str:
    """The ``connectionId`` of a stream opened by ``live_stream``."""
    return client.all_events[0].json()["connectionId"]


async def next_sync_event(client, name: str) -> tuple[int, dict[str, Any]]:
    """The next event on ``client``, which must be ``name`` with a cursor.

    :returns: ``(cursor, data)``.
    """
    event = await client.next_event()
    assert event.type == name, event
    assert event.id is not None and event.id.isdigit(), event
    return int(event.id), event.json()


# -- create -------------------------------------------------------------------


async def test_create_answers_201_with_every_field(server):
    body = {
        "type": "success",
        "message": "QuickCheck completed",
        "actionUrl": "/results/42",
        "sourceType": "QUICK_CHECK",
        "data": {"score": 97, "tags": ["a", "b"]},
    }
    status, _, created, raw = await create(server, "alice", body)
    assert status == 201, raw
    assert set(created) == NOTIFICATION_KEYS
    assert isinstance(created["notificationId"], str) and created["notificationId"]
    assert created["userId"] == "alice"
    assert created["type"] == "success"
    assert created["message"] == "QuickCheck completed"
    assert ISO_UTC.fullmatch(created["createdAt"]), created["createdAt"]
    assert created["actionUrl"] == "/results/42"
    assert created["sourceType"] == "QUICK_CHECK"
    assert created["readAt"] is None
    assert created["data"] == {"score": 97, "tags": ["a", "b"]}


async def test_create_without_optional_fields_gives_them_as_null(server):
    created = await server.notify("alice", "plain")
    assert set(created) == NOTIFICATION_KEYS
    assert created["actionUrl"] is None and created["sourceType"] is None and created["data"] is None


async def test_create_location_answers_the_same_notification(server):
    status, headers, created, raw = await create(server, "alice", {"type": "info", "message": "hi"})
    assert status == 201, raw
    location = headers["Location"]
    assert location == path("alice", created["notificationId"])
    status, _, fetched, raw = await server.request("GET", location, as_user="alice")
    assert status == 200, raw
    assert fetched == created


async def test_created_notification_is_in_the_list(server):
    created = await server.notify("alice", "stored")
    assert (await listing(server, "alice"))["items"] == [created]


async def test_pushed_notification_is_already_stored(server):
    client = await server.live_stream("alice")
    created = await server.notify("alice", "stored first")
    pushed = (await client.next_event()).json()
    status, _, fetched, raw = await server.request("GET", path("alice", pushed["notificationId"]), as_user="alice")
    assert status == 200, raw
    assert fetched == pushed == created
    client.close()


@pytest.mark.parametrize("kind", ["info", "success", "warning", "error"])
async def test_create_accepts_each_type(server, kind):
    assert (await server.notify("alice", "x", type=kind))["type"] == kind


#: Bodies that must be refused with 422: ``id -> fields over a valid base``;
#: a field given as ``None`` is left out of the body.
INVALID_FIELDS: dict[str, dict[str, Any]] = {
    "type unknown": {"type": "fatal"},
    "type uppercase": {"type": "INFO"},
    "type missing": {"type": None},
    "message empty": {"message": ""},
    "message 2001 chars": {"message": "m" * 2001},
    "message number": {"message": 5},
    "message list": {"message": ["a"]},
    "message missing": {"message": None},
    "actionUrl javascript": {"actionUrl": "javascript:alert(1)"},
    "actionUrl protocol-relative": {"actionUrl": "//evil.example"},
    "actionUrl backslash": {"actionUrl": "/\\evil"},
    "actionUrl ftp": {"actionUrl": "ftp://x"},
    "actionUrl no host": {"actionUrl": "http://"},
    "actionUrl data": {"actionUrl": "data:text/html,<script>alert(1)</script>"},
    "actionUrl relative": {"actionUrl": "results/42"},
    "actionUrl empty": {"actionUrl": ""},
    "actionUrl newline": {"actionUrl": "/a\nb"},
    "actionUrl not string": {"actionUrl": 42},
    "sourceType lowercase": {"sourceType": "quick_check"},
    "sourceType 65 chars": {"sourceType": "Q" * 65},
    "sourceType empty": {"sourceType": ""},
    "sourceType trailing newline": {"sourceType": "QUICK\n"},
    "sourceType number": {"sourceType": 1},
    "data list": {"data": [1, 2]},
    "data string": {"data": "{}"},
    "data number": {"data": 3},
    "data over 8 KiB": {"data": {"k": "x" * 8185}},
}


@pytest.mark.parametrize("fields", list(INVALID_FIELDS.values()), ids=list(INVALID_FIELDS))
async def test_create_refuses_invalid_field_with_422(server, fields):
    body = {"type": "info", "message": "hello", **fields}
    body = {key: value for key, value in body.items() if value is not None}
    assert_error(await create(server, "alice", body), 422)
    assert (await listing(server, "alice"))["items"] == []


#: Bodies at the edge of what is allowed: ``id -> (fields, expected echo)``.
#: ``{"k": "<8184 x>"}`` is exactly 8192 bytes of compact JSON.
VALID_EDGES: dict[str, dict[str, Any]] = {
    "message 2000 chars": {"message": "m" * 2000},
    "message one char": {"message": "m"},
    "message multi-byte": {"message": "é" * 2000},
    "actionUrl path": {"actionUrl": "/ok/path"},
    "actionUrl root": {"actionUrl": "/"},
    "actionUrl https": {"actionUrl": "https://x.example/a"},
    "actionUrl http with query": {"actionUrl": "http://x.example:8080/a?b=c#d"},
    "sourceType with digits": {"sourceType": "QUICK_CHECK_1"},
    "sourceType 64 chars": {"sourceType": "Q" * 64},
    "data exactly 8 KiB": {"data": {"k": "x" * 8184}},
    "data empty object": {"data": {}},
    "data nested": {"data": {"a": {"b": [1, None, True, "ü"]}}},
}


@pytest.mark.parametrize("fields", list(VALID_EDGES.values()), ids=list(VALID_EDGES))
async def test_create_accepts_field_at_the_edge(server, fields):
    created = await server.notify("alice", **{"message": "hello", **fields})
    for key, value in fields.items():
        assert created[key] == value


async def test_create_decodes_escaped_surrogate_pair(server):
    raw_body = b'{"type":"info","message":"party \\ud83c\\udf89"}'
    status, _, created, raw = await create(server, "alice", raw_body, headers=JSON)
    assert status == 201, raw
    assert created["message"] == "party \U0001f389"


async def test_create_ignores_unknown_fields(server):
    body = {"type": "info", "message": "hi", "priority": "high", "readAt": "2020-01-01T00:00:00Z", "userId": "mallory"}
    status, _, created, raw = await create(server, "alice", body)
    assert status == 201, raw
    assert set(created) == NOTIFICATION_KEYS
    assert created["userId"] == "alice" and created["readAt"] is None


async def test_create_accepts_json_content_type_with_charset(server):
    body = json.dumps({"type": "info", "message": "hi"}).encode()
    status, _, _, raw = await create(server, "alice", body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 201, raw


async def test_create_refuses_json_array_body_with_422(server):
    assert_error(await create(server, "alice", [{"type": "info", "message": "hi"}]), 422)


@pytest.mark.parametrize("body", [b"{", b"{'type': 'info'}", b"", b'{"type":"info",}'], ids=["truncated", "single quotes", "empty", "trailing comma"])
async def test_create_refuses_invalid_json_with_400(server, body):
    assert_error(await create(server, "alice", body, headers=JSON), 400)


async def test_create_refuses_invalid_utf8_with_400(server):
    body = b'{"type":"info","message":"caf\xe9"}'
    assert_error(await create(server, "alice", body, headers=JSON), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_create_refuses_non_json_content_type_with_415(server, content_type):
    body = json.dumps({"type": "info", "message": "hi"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    assert_error(await create(server, "alice", body, headers=headers), 415)


def padded_body(size: int) -> bytes:
    """A valid notification body of exactly ``size`` bytes (unknown padding field)."""
    empty = json.dumps({"type": "info", "message": "big", "padding": ""}).encode()
    body = json.dumps({"type": "info", "message": "big", "padding": "p" * (size - len(empty))}).encode()
    assert len(body) == size
    return body


async def test_create_refuses_body_over_the_default_limit_with_413(server):
    assert_error(await create(server, "alice", padded_body(256 * 1024 + 1), headers=JSON), 413)


async def test_create_accepts_body_of_exactly_the_default_limit(server):
    status, _, _, raw = await create(server, "alice", padded_body(256 * 1024), headers=JSON)
    assert status == 201, raw


async def test_create_body_limit_follows_max_body_kb(make_server):
    server = await make_server(max_body_kb=1)
    assert_error(await create(server, "alice", padded_body(1025), headers=JSON), 413)
    status, _, _, raw = await create(server, "alice", padded_body(1024), headers=JSON)
    assert status == 201, raw


# -- X-Connection-Id ----------------------------------------------------------


async def test_connection_id_header_leaves_the_originator_out(server):
    origin = await server.live_stream("alice")
    other = await server.live_stream("alice")
    status, _, skipped, raw = await create(
        server, "alice", {"type": "info", "message": "from tab 1"}, headers={"X-Connection-Id": connection_id(origin)}
    )
    assert status == 201, raw
    assert (await other.next_event()).json() == skipped
    following = await server.notify("alice", "for everyone")
    assert (await other.next_event()).json() == following
    # Events reach one stream in order: had the originator been sent the
    # first notification, it would come before the second.
    assert (await origin.next_event()).json() == following
    origin.close()
    other.close()


async def test_unknown_connection_id_excludes_nobody(server):
    client = await server.live_stream("alice")
    status, _, created, raw = await create(
        server, "alice", {"type": "info", "message": "hi"}, headers={"X-Connection-Id": "c_nobody"}
    )
    assert status == 201, raw
    assert (await client.next_event()).json() == created
    client.close()


# -- the list -----------------------------------------------------------------


async def test_list_is_newest_first(server):
    created = await create_many(server, "alice", 4)
    page = await listing(server, "alice")
    assert page["items"] == created[::-1]
    assert page["nextBefore"] is None


async def test_list_shows_only_the_users_own_notifications(server):
    await server.notify("bob", "bob's")
    mine = await server.notify("alice", "alice's")
    assert (await listing(server, "alice"))["items"] == [mine]


@pytest.mark.parametrize("limit", ["0", "101", "abc", "-1", "", "1.5", "1e2"])
async def test_list_refuses_limit_outside_1_to_100_with_400(server, limit):
    response = await server.request("GET", path("alice", query="limit=" + limit), as_user="alice")
    assert_error(response, 400)


@pytest.mark.parametrize("limit", [1, 100])
async def test_list_accepts_limit_bounds(server, limit):
    await create_many(server, "alice", 2)
    assert len((await listing(server, "alice", f"limit={limit}"))["items"]) == min(limit, 2)


async def test_list_pages_with_before_until_next_before_is_null(server):
    created = await create_many(server, "alice", 7)
    seen: list[dict[str, Any]] = []
    query = "limit=3"
    sizes = []
    while True:
        page = await listing(server, "alice", query)
        seen += page["items"]
        sizes.append(len(page["items"]))
        if page["nextBefore"] is None:
            break
        assert page["nextBefore"] == page["items"][-1]["notificationId"]
        query = "limit=3&before=" + urllib.parse.quote(page["nextBefore"])
    assert sizes == [3, 3, 1]
    assert seen == created[::-1]


async def test_list_page_that_ends_exactly_has_null_next_before(server):
    await create_many(server, "alice", 3)
    assert (await listing(server, "alice", "limit=3"))["nextBefore"] is None


async def test_list_unread_true_shows_only_unread(server):
    first, second, third = await create_many(server, "alice", 3)
    status, _, _, raw = await patch_read(server, "alice", second["notificationId"], True)
    assert status == 200, raw
    page = await listing(server, "alice", "unread=true")
    assert [item["notificationId"] for item in page["items"]] == [third["notificationId"], first["notificationId"]]
    assert all(item["readAt"] is None for item in page["items"])


async def test_list_unread_false_shows_everything(server):
    created = await create_many(server, "alice", 2)
    await patch_read(server, "alice", created[0]["notificationId"], True)
    assert len((await listing(server, "alice", "unread=false"))["items"]) == 2


async def test_list_reports_unread_count_of_all_pages(server):
    created = await create_many(server, "alice", 5)
    await patch_read(server, "alice", created[0]["notificationId"], True)
    page = await listing(server, "alice", "limit=1")
    assert page["unreadCount"] == 4
    assert len(page["items"]) == 1


async def test_list_refuses_before_of_unknown_id_with_400(server):
    await server.notify("alice", "x")
    assert_error(await server.request("GET", path("alice", query="before=ntf_unknown"), as_user="alice"), 400)


async def test_list_refuses_before_of_another_users_id_with_400(server):
    bobs = await server.notify("bob", "bob's")
    await server.notify("alice", "alice's")
    query = "before=" + urllib.parse.quote(bobs["notificationId"])
    assert_error(await server.request("GET", path("alice", query=query), as_user="alice"), 400)


async def test_list_refuses_unread_maybe_with_400(server):
    assert_error(await server.request("GET", path("alice", query="unread=maybe"), as_user="alice"), 400)


# -- unread count and read state -----------------------------------------------


async def test_unread_count_counts_unread_notifications(server):
    created = await create_many(server, "alice", 3)
    await patch_read(server, "alice", created[1]["notificationId"], True)
    await server.notify("bob", "not alice's")
    status, _, body, raw = await server.request("GET", path("alice", "unread-count"), as_user="alice")
    assert status == 200, raw
    assert body == {"unreadCount": 2}


async def test_patch_read_true_answers_the_notification_with_read_at(server):
    created = await server.notify("alice", "x")
    status, _, body, raw = await patch_read(server, "alice", created["notificationId"], True)
    assert status == 200, raw
    assert ISO_UTC.fullmatch(body["readAt"]), body["readAt"]
    assert {**body, "readAt": None} == created


async def test_patch_read_tells_the_users_other_device(server):
    device = await server.live_stream("alice")
    created = await server.notify("alice", "x")
    pushed = await device.next_event()
    await server.notify("alice", "still unread")
    await device.next_event()
    await patch_read(server, "alice", created["notificationId"], True)
    cursor, data = await next_sync_event(device, "notification-read")
    assert cursor > int(pushed.id)
    assert data["notificationIds"] == [created["notificationId"]]
    assert data["unreadCount"] == 1
    device.close()


async def test_patch_read_false_makes_it_unread_again(server):
    created = await server.notify("alice", "x")
    await patch_read(server, "alice", created["notificationId"], True)
    device = await server.live_stream("alice")
    status, _, body, raw = await patch_read(server, "alice", created["notificationId"], False)
    assert status == 200, raw
    assert body == created
    _, data = await next_sync_event(device, "notification-read")
    assert data["notificationIds"] == [created["notificationId"]]
    assert data["unreadCount"] == 1
    assert (await listing(server, "alice"))["unreadCount"] == 1
    device.close()


@pytest.mark.parametrize("read", ["true", 1, 0, None, [True], {"v": True}], ids=repr)
async def test_patch_refuses_non_boolean_read_with_422(server, read):
    created = await server.notify("alice", "x")
    assert_error(await patch_read(server, "alice", created["notificationId"], read), 422)


async def test_patch_refuses_missing_read_with_422(server):
    created = await server.notify("alice", "x")
    response = await server.request("PATCH", path("alice", created["notificationId"]), {}, as_user="alice")
    assert_error(response, 422)


async def test_another_users_notification_id_answers_404(server):
    alices = await server.notify("alice", "alice's")
    assert_error(await patch_read(server, "bob", alices["notificationId"], True), 404)
    assert_error(await server.request("GET", path("bob", alices["notificationId"]), as_user="bob"), 404)
    assert_error(await server.request("DELETE", path("bob", alices["notificationId"]), as_user="bob"), 404)
    assert (await listing(server, "alice"))["items"] == [alices]


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_unknown_notification_id_answers_404(server, method):
    body = {"read": True} if method == "PATCH" else None
    assert_error(await server.request(method, path("alice", "ntf_unknown"), body, as_user="alice"), 404)


async def test_read_all_marks_everything_read(server):
    created = await create_many(server, "alice", 3)
    await patch_read(server, "alice", created[0]["notificationId"], True)
    status, _, body, raw = await server.request("POST", path("alice", "read-all"), as_user="alice")
    assert status == 200, raw
    assert body == {"updated": 2, "unreadCount": 0}
    page = await listing(server, "alice")
    assert page["unreadCount"] == 0
    assert all(ISO_UTC.fullmatch(item["readAt"]) for item in page["items"])


async def test_read_all_tells_devices_every_id(server):
    created = await create_many(server, "alice", 3)
    device = await server.live_stream("alice")
    await server.request("POST", path("alice", "read-all"), as_user="alice")
    _, data = await next_sync_event(device, "notification-read")
    assert sorted(data["notificationIds"]) == sorted(item["notificationId"] for item in created)
    assert data["unreadCount"] == 0
    device.close()


async def test_read_all_with_nothing_unread_updates_nothing(server):
    status, _, body, raw = await server.request("POST", path("alice", "read-all"), as_user="alice")
    assert status == 200, raw
    assert body == {"updated": 0, "unreadCount": 0}


# -- delete -------------------------------------------------------------------


async def test_delete_answers_204_and_tells_devices(server):
    keep, gone = await create_many(server, "alice", 2)
    device = await server.live_stream("alice")
    status, _, _, raw = await server.request("DELETE", path("alice", gone["notificationId"]), as_user="alice")
    assert status == 204 and raw == b""
    _, data = await next_sync_event(device, "notification-deleted")
    assert data["notificationIds"] == [gone["notificationId"]]
    assert data["unreadCount"] == 1
    assert (await listing(server, "alice"))["items"] == [keep]
    device.close()


async def test_delete_twice_answers_404(server):
    created = await server.notify("alice", "x")
    url = path("alice", created["notificationId"])
    assert (await server.request("DELETE", url, as_user="alice"))[0] == 204
    assert_error(await server.request("DELETE", url, as_user="alice"), 404)


async def test_get_after_delete_answers_404(server):
    created = await server.notify("alice", "x")
    url = path("alice", created["notificationId"])
    await server.request("DELETE", url, as_user="alice")
    assert_error(await server.request("GET", url, as_user="alice"), 404)
