"""Password hashing runs in its own bounded pool (core/domain/passwords.py).

scrypt costs tens of milliseconds of CPU per login.  On the database reader
threads, a flood of wrong-password logins queued every other read behind
it; in a pool of its own, with a bounded wait, the rest of the service does
not notice, and logins past the bound get 503 ``login_busy`` with
``Retry-After`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time

import pytest

from core.domain.auth import hash_password
from core.domain.errors import Unavailable
from core.domain.passwords import PasswordPool
from tests.support.checks import assert_error, wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_error_logged")]

LOGIN = "/api/v1/auth/login"
PASSWORD = "correct horse battery staple"
#: Concurrent wrong-password logins in a flood.
FLOOD = 24
#: Unread-count requests timed before the flood.
SAMPLES = 40
#: Seconds between the starts of two reads timed during the flood.
PACE = 0.01


async def timed_unread_count(server, token: str) -> float:
    """Seconds one ``GET .../unread-count`` of bob takes (asserts 200)."""
    started = time.perf_counter()
    status, _, body, raw = await server.request("GET", "/api/v1/users/bob/notifications/unread-count",
                                                headers={"Authorization": f"Bearer {token}"})
    elapsed = time.perf_counter() - started
    assert status == 200, raw
    assert body == {"unreadCount": 1}
    return elapsed


async def wrong_login(server, user_id: str = "alice"):
    """A login with the wrong password; the raw response."""
    return await server.request("POST", LOGIN, {"userId": user_id, "password": "not the password"})


async def test_a_login_flood_does_not_slow_down_another_users_reads(server):
    await server.app.service.create_user("alice", PASSWORD)
    await server.notify("bob", "one unread")
    token = server.token("bob")
    for _ in range(5):  # warm up: connections, statements, caches
        await timed_unread_count(server, token)
    before = [await timed_unread_count(server, token) for _ in range(SAMPLES)]

    flood = [asyncio.ensure_future(wrong_login(server)) for _ in range(FLOOD)]
    # Open loop: a read starts every PACE seconds for as long as the flood
    # lasts, whether or not the previous one has finished, as other users'
    # requests arrive (a closed loop would take few samples while stuck).
    reads = []
    while not all(task.done() for task in flood):
        reads.append(asyncio.ensure_future(timed_unread_count(server, token)))
        await asyncio.sleep(PACE)
    answers = await asyncio.gather(*flood)
    during = await asyncio.gather(*reads)

    p50_before, p50_during = statistics.median(before), statistics.median(during)
    print(f"unread-count p50 before {p50_before * 1000:.1f} ms, during the flood {p50_during * 1000:.1f} ms "
          f"({len(during)} samples), max during {max(during) * 1000:.1f} ms; "
          f"{sum(answer[0] == 503 for answer in answers)} of {FLOOD} logins refused 503")
    assert len(during) >= 3, "the flood ended before the reads could be timed"
    assert {answer[0] for answer in answers} <= {401, 503}, [answer[3] for answer in answers]
    # With scrypt on the database reader threads this was 1 ms before and
    # 200-600 ms during; in the pool, 1-2 ms before and 2-5 ms during.  5x
    # plus 10 ms leaves room for a loaded two-core machine.
    assert p50_during <= 5 * p50_before + 0.010


async def test_a_correct_login_after_a_flood_works(server):
    await server.app.service.create_user("alice", PASSWORD)
    answers = await asyncio.gather(*(wrong_login(server) for _ in range(FLOOD)))
    assert {answer[0] for answer in answers} <= {401, 503}, [answer[3] for answer in answers]
    await wait_until(lambda: server.app.service.passwords.jobs == 0)
    status, _, body, raw = await server.request("POST", LOGIN, {"userId": "alice", "password": PASSWORD})
    assert status == 200, raw
    status, _, _, raw = await server.request("GET", "/api/v1/users/alice/notifications",
                                             headers={"Authorization": f"Bearer {body['token']}"})
    assert status == 200, raw


@contextlib.asynccontextmanager
async def full_pool(server):
    """Every slot of the server's password pool taken by a job that waits for the block to end."""
    pool = server.app.service.passwords
    gate = threading.Event()
    holders = [asyncio.ensure_future(pool.run(gate.wait)) for _ in range(pool.capacity)]
    try:
        await wait_until(lambda: pool.jobs == pool.capacity)
        yield pool
    finally:
        gate.set()
        await asyncio.gather(*holders)


@pytest.mark.parametrize("user_id", ["alice", "nobody"], ids=["known-user", "unknown-user"])
async def test_a_login_when_the_pool_is_full_is_503_login_busy_with_retry_after(server, user_id):
    await server.app.service.create_user("alice", PASSWORD)
    async with full_pool(server):
        response = await server.request("POST", LOGIN, {"userId": user_id, "password": PASSWORD})
    # The same answer for a user that exists and one that does not.
    assert_error(response, 503, "login_busy")
    assert int(response[1]["Retry-After"]) >= 1
    assert "Set-Cookie" not in response[1]


async def test_the_pool_takes_logins_again_once_it_has_room(server):
    await server.app.service.create_user("alice", PASSWORD)
    async with full_pool(server):
        assert_error(await server.request("POST", LOGIN, {"userId": "alice", "password": PASSWORD}), 503, "login_busy")
    status, _, _, raw = await server.request("POST", LOGIN, {"userId": "alice", "password": PASSWORD})
    assert status == 200, raw


async def test_other_requests_are_served_while_the_pool_is_full(server):
    await server.notify("bob", "one unread")
    async with full_pool(server):
        assert await timed_unread_count(server, server.token("bob")) < 1.0
        await server.notify("bob", "another")


async def test_a_closed_pool_refuses_jobs_as_unavailable():
    pool = PasswordPool(threads=1)
    assert await pool.run(hash_password, "pw")
    pool.close()
    with pytest.raises(Unavailable) as refused:
        await pool.run(hash_password, "pw")
    assert refused.value.code == "unavailable"


def test_the_pool_takes_one_job_per_thread_plus_its_waiting_ones():
    pool = PasswordPool(threads=2, waiting_per_thread=3)
    try:
        assert pool.capacity == 8
    finally:
        pool.close()
