"""The publish rate limit: a token bucket per principal (``--publish-rate``).

``POST .../notifications`` and ``POST /api/v1/events`` spend one token of
the caller's bucket (keyed by the token's subject); an empty bucket answers
429 with ``Retry-After`` in whole seconds, and stores nothing.  Off by
default.  Time is a hand-driven clock, never a sleep.
"""

from __future__ import annotations

import pytest

from core.ratelimit import RateLimiter
from tests.support.checks import assert_error

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


async def test_publishing_is_not_rate_limited_by_default(server):
    assert server.app.deps.publish_limiter is None
    for _ in range(30):
        assert (await publish(server))[0] == 201
