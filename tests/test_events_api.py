"""The contract's "Events for other modules" section: ``POST /api/v1/events``.

A publisher (or admin) sends ``{"event", "userIds", "data"}``; each listed
user's streams get ``event: <name>`` with a cursor and the posted ``data``
(``{}`` when none is given), stored so that a reconnect replays it.  The
product's own event names are refused with 400, malformed names and user
lists with 422.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.checks import assert_error

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

EVENTS = "/api/v1/events"
RESERVED = ["message", "ready", "reset", "token-expired", "notification-read", "notification-deleted"]


async def publish(server, body: Any, role: str = "publisher", as_user: str = "quickcheck-svc"):
    """``POST /api/v1/events`` as a publisher (by default); the raw response."""
    return await server.request("POST", EVENTS, body, as_user=as_user, role=role)


async def published(server, event: str, user_ids: list[str], data: Any = None) -> int:
    """Publish one event (asserts 202); :returns: the ``published`` count."""
    body: dict[str, Any] = {"event": event, "userIds": user_ids}
    if data is not None:
        body["data"] = data
    status, _, answer, raw = await publish(server, body)
    assert status == 202, raw
    assert set(answer) == {"published"}
    return answer["published"]


async def test_publish_answers_202_with_the_number_of_users(server):
    assert await published(server, "quickcheck.completed", ["alice", "bob", "carol"], {"id": 7}) == 3


async def test_published_event_reaches_each_listed_users_stream(server):
    alice = await server.live_stream("alice")
    bob = await server.live_stream("bob")
    data = {"checkId": 42, "status": "done", "nested": {"list": [1, "two", None]}}
    await published(server, "quickcheck.completed", ["alice", "bob"], data)
    for client in (alice, bob):
        event = await client.next_event()
        assert event.type == "quickcheck.completed"
        assert event.id is not None and event.id.isdigit(), event
        assert event.json() == data
        client.close()


async def test_published_event_skips_users_not_listed(server):
    carol = await server.live_stream("carol")
    await published(server, "only.alice", ["alice"], {"n": 1})
    await published(server, "for.carol", ["carol"], {"n": 2})
    # One stream delivers in order: the first event would have come first.
    event = await carol.next_event()
    assert (event.type, event.json()) == ("for.carol", {"n": 2})
    carol.close()


async def test_publish_without_data_delivers_empty_object(server):
    client = await server.live_stream("alice")
    await published(server, "ping.me", ["alice"])
    event = await client.next_event()
    assert event.type == "ping.me"
    assert event.json() == {}
    client.close()


async def test_publish_counts_duplicate_user_ids_once(server):
    client = await server.live_stream("alice")
    assert await published(server, "dup.check", ["alice", "bob", "alice", "alice"], {"n": 1}) == 2
    await published(server, "after.dup", ["alice"], {"n": 2})
    names = [(await client.next_event()).type for _ in range(2)]
    assert names == ["dup.check", "after.dup"]
    client.close()


async def test_an_event_for_several_users_takes_each_users_next_cursor(server):
    await server.notify("bob", "one")
    await server.notify("bob", "two")
    streams = {user: await server.live_stream(user) for user in ("carol", "bob", "alice")}
    await published(server, "batch.done", ["carol", "bob", "alice"], {"n": 1})
    await published(server, "batch.done", ["alice", "bob"], {"n": 2})
    got = {user: [(e.id, e.json()["n"]) for e in await client.events(2 if user != "carol" else 1)]
           for user, client in streams.items()}
    assert got == {
        "carol": [("1", 1)],
        "bob": [("3", 1), ("4", 2)],
        "alice": [("1", 1), ("2", 2)],
    }
    for client in streams.values():
        client.close()


async def test_publish_to_users_without_streams_still_counts_them(server):
    assert await published(server, "offline.users", ["nobody-1", "nobody-2"]) == 2


async def test_published_events_are_replayed_after_reconnect(server):
    client = await server.live_stream("alice")
    await server.notify("alice", "before the events")
    cursor = (await client.next_event()).id
    client.close()
    await published(server, "report.ready", ["alice"], {"report": 1})
    await published(server, "report.ready", ["alice"], {"report": 2})
    again = await server.live_stream("alice", headers={"Last-Event-ID": cursor})
    first, second = await again.events(2)
    assert [(first.type, first.json()), (second.type, second.json())] == [
        ("report.ready", {"report": 1}),
        ("report.ready", {"report": 2}),
    ]
    assert int(cursor) < int(first.id) < int(second.id)
    again.close()


@pytest.mark.parametrize("name", ["a", "quickcheck.completed", "x:y-z.0", "snake_case", "9lives", "e" * 64])
async def test_publish_accepts_valid_name(server, name):
    client = await server.live_stream("alice")
    await published(server, name, ["alice"])
    assert (await client.next_event()).type == name
    client.close()


@pytest.mark.parametrize("name", RESERVED)
async def test_publish_refuses_reserved_name_with_400(server, name):
    assert_error(await publish(server, {"event": name, "userIds": ["alice"], "data": {}}), 400)


@pytest.mark.parametrize(
    "name",
    ["Upper", "-x", ".x", "e" * 65, "", "with space", "new\nline", "trailing-newline\n", "é", 5, None, ["a"]],
    ids=repr,
)
async def test_publish_refuses_invalid_name_with_422(server, name):
    body = {"event": name, "userIds": ["alice"]} if name is not None else {"userIds": ["alice"]}
    assert_error(await publish(server, body), 422)


@pytest.mark.parametrize(
    "user_ids",
    [[], [f"user-{i}" for i in range(1001)], [1], [None], ["alice", 2], [""], ["alice\n"], "alice", {"alice": 1}, None],
    ids=["empty", "1001 ids", "number", "null", "mixed", "empty string", "trailing newline", "string", "object", "missing"],
)
async def test_publish_refuses_bad_user_ids_with_422(server, user_ids):
    body = {"event": "x", "userIds": user_ids} if user_ids is not None else {"event": "x"}
    assert_error(await publish(server, body), 422)


async def test_publish_accepts_1000_user_ids(server):
    assert await published(server, "bulk", [f"user-{i}" for i in range(1000)]) == 1000


@pytest.mark.parametrize("data", [[1], "text", 3, True], ids=repr)
async def test_publish_refuses_data_that_is_not_an_object_with_422(server, data):
    assert_error(await publish(server, {"event": "x", "userIds": ["alice"], "data": data}), 422)


async def test_publish_refuses_data_over_8_kib_with_422(server):
    assert_error(await publish(server, {"event": "x", "userIds": ["alice"], "data": {"k": "x" * 8185}}), 422)


async def test_publish_refuses_a_plain_user_with_403(server):
    assert_error(await publish(server, {"event": "x", "userIds": ["alice"]}, role="user", as_user="alice"), 403)


async def test_admin_may_publish(server):
    status, _, answer, raw = await publish(server, {"event": "x", "userIds": ["alice"]}, role="admin", as_user="root")
    assert status == 202, raw
    assert answer == {"published": 1}


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [(b"{", {"Content-Type": "application/json"}, 400), (b'{"event":"x","userIds":["a"]}', {"Content-Type": "text/plain"}, 415), ([{"event": "x"}], {}, 422)],
    ids=["invalid json", "text/plain", "array body"],
)
async def test_publish_refuses_malformed_body(server, body, headers, status):
    response = await server.request("POST", EVENTS, body, headers=headers, as_user="svc", role="publisher")
    assert_error(response, status)
