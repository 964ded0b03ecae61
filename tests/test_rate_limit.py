"""The write budgets: a token bucket per principal for each.

``POST .../notifications`` and ``POST /api/v1/events`` spend one token of
the caller's publish bucket (``--publish-rate``, default 200/s); stream
tickets, ``PATCH`` read state, ``read-all`` and ``DELETE`` spend one of the
caller's write bucket (``--write-rate``, default 20/s).  Buckets are keyed
by the token's subject; an empty one answers 429 ``rate_limited`` with
``Retry-After`` in whole seconds, and nothing is written.  A rate of 0
turns a budget off.  Time is a hand-driven clock, never a sleep.
"""

from __future__ import annotations

import asyncio

import pytest

from core.domain.ratelimit import RateLimiter
from models import queries
from models.tables import StreamTicket
from tests.support.checks import assert_error

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the bucket -----------------------------------------------------------------------------


def test_bucket_allows_the_burst_then_refuses():
    limiter = RateLimiter(rate=2, burst=3, clock=Clock())
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)


def test_refused_take_spends_nothing():
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=1, clock=clock)
    limiter.take("a")
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("a") == pytest.approx(1.0)
    clock.now += 1
    assert limiter.take("a") == 0


def test_bucket_refills_at_the_rate_up_to_the_burst():
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    for _ in range(5):
        limiter.take("a")
    clock.now += 0.25  # 2.5 tokens
    assert [limiter.take("a") == 0 for _ in range(3)] == [True, True, False]
    clock.now += 3600  # never more than the burst
    assert sum(limiter.take("a") == 0 for _ in range(10)) == 5


def test_keys_have_separate_buckets():
    limiter = RateLimiter(rate=1, burst=1, clock=Clock())
    assert limiter.take("a") == 0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0


def test_burst_zero_means_one_second_of_rate_at_least_one():
    assert RateLimiter(rate=20, burst=0).burst == 20
    assert RateLimiter(rate=2.5).burst == 3
    assert RateLimiter(rate=0.1).burst == 1


def test_buckets_idle_until_full_are_dropped():
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    for key in ("a", "b", "c"):
        limiter.take(key)
    assert len(limiter) == 3
    clock.now += 2  # every bucket is full again: the same as none
    limiter.take("d")
    assert len(limiter) == 1


def test_bucket_count_never_passes_max_keys():
    limiter = RateLimiter(rate=1, burst=5, clock=Clock(), max_keys=100)
    for number in range(1000):
        limiter.take(f"user-{number}")
    assert len(limiter) == 100


# -- over HTTP ----------------------------------------------------------------------------


async def limited_server(make_server, rate: float = 1, burst: int = 3):
    """A server with a publish limit whose clock the test drives."""
    server = await make_server(publish_rate=rate, publish_burst=burst)
    clock = Clock()
    server.app.deps.publish_limiter.clock = clock
    return server, clock


async def publish(server, user_id: str = "alice", as_user: str | None = None, role: str = "user"):
    """``POST`` a notification for ``user_id``; the raw response."""
    body = {"type": "info", "message": "hi"}
    return await server.request("POST", f"/api/v1/users/{user_id}/notifications", body, as_user=as_user or user_id, role=role)


async def stored(server, user_id: str) -> int:
    """How many notifications ``user_id`` has."""
    _, _, body, _ = await server.request("GET", f"/api/v1/users/{user_id}/notifications?limit=100", as_user=user_id)
    return len(body["items"])


async def test_publishing_past_the_burst_is_429_with_retry_after(make_server):
    server, _ = await limited_server(make_server)
    for _ in range(3):
        assert (await publish(server))[0] == 201
    response = await publish(server)
    assert_error(response, 429, "rate_limited")
    assert response[1]["Retry-After"] == "1"
    assert await stored(server, "alice") == 3


async def test_retry_after_is_whole_seconds_rounded_up(make_server):
    server, _ = await limited_server(make_server, rate=0.3, burst=1)
    assert (await publish(server))[0] == 201
    response = await publish(server)
    assert_error(response, 429, "rate_limited")
    assert response[1]["Retry-After"] == "4"  # 3.33 s until the next token


async def test_another_principal_is_not_limited_by_the_first(make_server):
    server, _ = await limited_server(make_server)
    for _ in range(4):
        await publish(server, "alice")
    assert_error(await publish(server, "alice"), 429, "rate_limited")
    assert (await publish(server, "bob"))[0] == 201


async def test_publishing_is_allowed_again_after_the_bucket_refills(make_server):
    server, clock = await limited_server(make_server)
    for _ in range(3):
        await publish(server)
    assert_error(await publish(server), 429, "rate_limited")
    clock.now += 1
    assert (await publish(server))[0] == 201
    assert_error(await publish(server), 429, "rate_limited")


async def test_the_bucket_is_per_principal_whoever_the_recipients(make_server):
    # A publisher writing to many users spends its own bucket, not theirs.
    server, _ = await limited_server(make_server)
    for user_id in ("u1", "u2", "u3"):
        assert (await publish(server, user_id, as_user="svc", role="publisher"))[0] == 201
    assert_error(await publish(server, "u4", as_user="svc", role="publisher"), 429, "rate_limited")


async def test_events_and_notifications_share_the_bucket(make_server):
    server, _ = await limited_server(make_server, burst=2)
    event = {"event": "build.finished", "userIds": ["bob"], "data": {}}
    assert (await server.request("POST", "/api/v1/events", event, as_user="svc", role="publisher"))[0] == 202
    assert (await publish(server, "bob", as_user="svc", role="publisher"))[0] == 201
    response = await server.request("POST", "/api/v1/events", event, as_user="svc", role="publisher")
    assert_error(response, 429, "rate_limited")
    assert response[1]["Retry-After"] == "1"


async def test_reading_is_not_rate_limited(make_server):
    server, _ = await limited_server(make_server, burst=1)
    await publish(server)
    for _ in range(5):
        status, _, _, raw = await server.request("GET", "/api/v1/users/alice/notifications", as_user="alice")
        assert status == 200, raw


async def test_publishing_past_the_burst_is_429_on_the_handler_door_too(make_server):
    server, _ = await limited_server(make_server, burst=1)
    path = "/api/v1/users/alice/notifications?door=handler"
    assert (await server.request("POST", path, {"type": "info", "message": "hi"}, as_user="alice"))[0] == 201
    response = await server.request("POST", path, {"type": "info", "message": "hi"}, as_user="alice")
    assert_error(response, 429, "rate_limited")
    assert await stored(server, "alice") == 1


async def test_publishing_is_limited_by_default_to_200_a_second(server):
    server.app.deps.publish_limiter.clock = Clock()
    for batch in range(4):
        answers = await asyncio.gather(*(publish(server) for _ in range(50)))
        assert [status for status, *_ in answers] == [201] * 50, batch
    response = await publish(server)
    assert_error(response, 429, "rate_limited")
    assert response[1]["Retry-After"] == "1"


async def test_a_publish_rate_of_zero_turns_the_publish_limit_off(make_server):
    server = await make_server(publish_rate=0)
    assert server.app.deps.publish_limiter is None
    answers = await asyncio.gather(*(publish(server) for _ in range(30)))
    assert [status for status, *_ in answers] == [201] * 30


# -- the write budget -----------------------------------------------------------------------


NOTIFICATIONS = "/api/v1/users/alice/notifications"


async def ticket(server, user_id: str = "alice"):
    """``POST /api/v1/auth/stream-ticket``; the raw response."""
    return await server.request("POST", "/api/v1/auth/stream-ticket", as_user=user_id)


async def write_limited_server(make_server, burst: int = 2):
    """A server whose write budget is ``burst`` at once, 1 a second, on a clock the test drives."""
    server = await make_server(write_rate=1, write_burst=burst)
    clock = Clock()
    server.app.deps.write_limiter.clock = clock
    return server, clock


async def spend_writes(server, count: int, user_id: str = "alice") -> None:
    """Spend ``count`` writes of ``user_id`` (stream tickets: no stream events)."""
    for _ in range(count):
        status, _, _, raw = await ticket(server, user_id)
        assert status == 200, raw


async def tickets_stored(server) -> int:
    return await server.app.runner.read(lambda: StreamTicket.select().count())


async def events_stored(server, user_id: str = "alice") -> int:
    return len(await server.app.runner.read(queries.events_after, user_id, 0, 1000))


async def test_write_limiter_is_on_by_default_at_20_a_second(server):
    assert (server.app.deps.write_limiter.rate, server.app.deps.write_limiter.burst) == (20, 20)
    server.app.deps.write_limiter.clock = Clock()
    await spend_writes(server, 20)
    response = await ticket(server)
    assert_error(response, 429, "rate_limited")
    assert response[1]["Retry-After"] == "1"


async def test_a_stream_ticket_past_the_write_budget_is_429_and_stores_no_ticket(make_server):
    server, _ = await write_limited_server(make_server)
    await spend_writes(server, 2)
    before = await tickets_stored(server)
    response = await ticket(server)
    assert_error(response, 429, "rate_limited")
    assert response[1]["Retry-After"] == "1"
    assert await tickets_stored(server) == before


@pytest.mark.parametrize("route", ["mark read", "read-all", "delete"])
async def test_a_write_past_the_write_budget_is_429_and_writes_no_stream_event(make_server, route):
    server, _ = await write_limited_server(make_server)
    created = await server.notify("alice")
    await spend_writes(server, 2)
    events = await events_stored(server)
    item = f"{NOTIFICATIONS}/{created['notificationId']}"
    method, path, body = {
        "mark read": ("PATCH", item, {"read": True}),
        "read-all": ("POST", f"{NOTIFICATIONS}/read-all", None),
        "delete": ("DELETE", item, None),
    }[route]
    response = await server.request(method, path, body, as_user="alice")
    assert_error(response, 429, "rate_limited")
    assert response[1]["Retry-After"] == "1"
    assert await events_stored(server) == events
    status, _, unchanged, _ = await server.request("GET", item, as_user="alice")
    assert status == 200 and unchanged["readAt"] is None


async def test_writes_are_allowed_again_after_the_write_bucket_refills(make_server):
    server, clock = await write_limited_server(make_server)
    await spend_writes(server, 2)
    assert_error(await ticket(server), 429, "rate_limited")
    clock.now += 1
    assert (await ticket(server))[0] == 200


async def test_another_principal_has_its_own_write_budget(make_server):
    server, _ = await write_limited_server(make_server)
    await spend_writes(server, 2)
    assert_error(await ticket(server), 429, "rate_limited")
    assert (await ticket(server, "bob"))[0] == 200


async def test_an_empty_write_budget_leaves_publishing_allowed(make_server):
    server, _ = await write_limited_server(make_server)
    await spend_writes(server, 2)
    assert_error(await ticket(server), 429, "rate_limited")
    assert (await publish(server))[0] == 201


async def test_an_empty_publish_budget_leaves_other_writes_allowed(make_server):
    server = await make_server(publish_rate=1, publish_burst=1)
    server.app.deps.publish_limiter.clock = Clock()
    assert (await publish(server))[0] == 201
    assert_error(await publish(server), 429, "rate_limited")
    assert (await ticket(server))[0] == 200


async def test_a_write_rate_of_zero_turns_the_write_limit_off(make_server):
    server = await make_server(write_rate=0)
    assert server.app.deps.write_limiter is None
    await spend_writes(server, 30)
