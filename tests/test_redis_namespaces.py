"""Deployments that share one Redis server stay apart.

Redis pub/sub channels belong to the whole server, whatever database a
client selected, so the broker names its channel and keys after the URL's
database number and ``--redis-namespace`` (``core.fanout.redis_broker.redis_names``).

The deployment tests run two deployments, each with its own database, its
own secret and two instances built by ``make_server`` as ``server.py``
builds them, on one real ``redis-server``, with the same user ids: once on
different database numbers, and once each on one database with namespaces
that differ (including names where one is the beginning of the other).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import pytest
import redis.asyncio as aioredis

from core.fanout.redis_broker import RedisBroker, redis_names
from tests.conftest import Server

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_error_logged")]


def broker_of(server: Server) -> RedisBroker:
    """The server's broker (white-box: its names and heartbeat)."""
    return server.app.deps.broker


# -- names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, namespace, channel, key_prefix",
    [
        ("redis://cache:6379", "", "notify:0::events", "notify:0::instance:"),
        ("redis://cache:6379/", "", "notify:0::events", "notify:0::instance:"),
        ("redis://cache:6379/0", "", "notify:0::events", "notify:0::instance:"),
        ("redis://:pw@cache:6379/3", "", "notify:3::events", "notify:3::instance:"),
        ("rediss://cache:6380/1", "blue", "notify:1:blue:events", "notify:1:blue:instance:"),
        # redis-py selects the ?db= database over the path's.
        ("redis://cache/1?db=4", "a.b-c_D9", "notify:4:a.b-c_D9:events", "notify:4:a.b-c_D9:instance:"),
    ],
)
def test_names_carry_the_database_the_url_selects_and_the_namespace(url, namespace, channel, key_prefix):
    assert redis_names(url, namespace) == (channel, key_prefix)


def test_no_two_deployments_share_a_channel_or_a_key_prefix_that_begins_anothers():
    # A SCAN for key_prefix + "*" matches another deployment's key
    # (its prefix + an instance id) exactly when one prefix begins the other.
    deployments = [
        (f"redis://cache/{db}", namespace)
        for db in (0, 1, 10)
        for namespace in ("", "a", "a.b", "a-b", "instance", "events", "0", "1")
    ]
    names = [redis_names(url, namespace) for url, namespace in deployments]
    assert len({name.channel for name in names}) == len(names)
    for one, other in itertools.permutations(names, 2):
        assert not other.key_prefix.startswith(one.key_prefix), (one, other)


@pytest.mark.parametrize("namespace", ["a:b", "a*", "a b", "[x]", "x" * 65, "é"])
def test_a_namespace_outside_its_alphabet_is_refused(namespace):
    with pytest.raises(ValueError, match="namespace"):
        redis_names("redis://cache/0", namespace)


def test_a_negative_database_number_is_refused():
    with pytest.raises(ValueError, match="database number"):
        redis_names("redis://cache/0?db=-1")


async def test_a_server_writes_only_keys_named_after_its_database_and_namespace(redis_server, make_server):
    server = await make_server(redis_url=f"redis://{redis_server.host}:{redis_server.port}/2", redis_namespace="blue")
    assert broker_of(server).channel == "notify:2:blue:events"
    database_0 = aioredis.Redis.from_url(redis_server.url)
    database_2 = aioredis.Redis.from_url(f"redis://{redis_server.host}:{redis_server.port}/2")
    try:
        assert await database_0.keys("*") == []
        assert await database_2.keys("*") == [f"notify:2:blue:instance:{server.manager.instance_id}".encode()]
    finally:
        await database_0.aclose()
        await database_2.aclose()


async def test_brokers_list_only_the_instances_of_their_own_namespace(redis_server):
    namespaces = ["", "instance", "a", "a.b", "a-b"]
    brokers = []
    try:
        for namespace in namespaces:
            broker = RedisBroker(redis_server.url, f"in-{namespace or 'none'}", namespace=namespace)
            brokers.append(broker)
            await broker.start(lambda message: None, lambda: None, lambda name=broker.instance_id: {"instanceId": name})
        for broker in brokers:
            assert [instance["instanceId"] for instance in await broker.instances()] == [broker.instance_id]
    finally:
        for broker in brokers:
            await broker.close()


# -- deployments ----------------------------------------------------------------------


class Deployment(NamedTuple):
    """Two instances of one deployment (same Redis names, same database)."""

    first: Server
    second: Server


#: (path of the Redis URL, namespace) of deployments A and B.
CASES = {
    "different-databases": (("", ""), ("/1", "")),
    "different-namespaces": (("/0", "blue"), ("/0", "green")),
    "namespace-and-a-longer-one-it-begins": (("/0", "a"), ("/0", "a.b")),
    "no-namespace-and-one-named-like-a-key-part": (("/0", ""), ("/0", "instance")),
}


@pytest.fixture(params=list(CASES))
def deployments(request, redis_server, make_server, new_db_url) -> tuple[Deployment, Deployment]:
    """Deployments A and B on the test's redis-server, each with its own database and secret."""
    base = f"redis://{redis_server.host}:{redis_server.port}"
    built = []
    for name, (path, namespace) in zip("ab", CASES[request.param], strict=True):
        settings = {
            "redis_url": base + path,
            "redis_namespace": namespace,
            "db_url": new_db_url(f"deployment-{name}"),
            "jwt_secret": f"secret-of-deployment-{name}-" + "x" * 20,
        }
        built.append(Deployment(make_server(**settings), make_server(**settings)))
    return built[0], built[1]


async def test_a_notification_of_one_deployment_never_reaches_the_other_deployments_streams(deployments):
    a, b = deployments
    on_a = await a.second.live_stream("alice")
    on_b = await b.second.live_stream("alice")
    created = await a.first.notify("alice", "for deployment a")
    # It came through Redis to A's other instance: Redis has dispatched it.
    assert (await on_a.next_event()).json() == created
    marker = await b.first.notify("alice", "marker of deployment b")
    # Redis sends a subscriber its channel's messages in publish order: had
    # B shared A's channel, A's notification would come before the marker.
    assert (await on_b.next_event()).json() == marker


async def test_cluster_stats_of_each_deployment_count_only_its_own_instances(deployments):
    a, b = deployments
    # Held: an unreferenced client may be garbage-collected mid-test.
    streams = [
        await a.first.live_stream("alice"),
        await b.first.live_stream("alice"),
        await b.second.live_stream("bob"),
    ]
    for server in (*a, *b):
        await broker_of(server).heartbeat()
    for deployment, devices in ((a, 1), (b, 2)):
        status, _, stats, raw = await deployment.first.request("GET", "/api/v1/stats?scope=cluster")
        assert status == 200, raw
        ids = {deployment.first.manager.instance_id, deployment.second.manager.instance_id}
        assert {instance["instanceId"] for instance in stats["instances"]} == ids
        assert stats["totalDevices"] == devices
    for stream in streams:
        await stream.aclose()


async def test_instances_of_one_deployment_with_a_database_and_namespace_reach_each_other(redis_server, make_server, new_db_url):
    settings = {
        "redis_url": f"redis://{redis_server.host}:{redis_server.port}/2",
        "redis_namespace": "blue",
        "db_url": new_db_url("shared"),
    }
    first = await make_server(**settings)
    second = await make_server(**settings)
    device = await second.live_stream("alice")
    created = await first.notify("alice", "from the other instance")
    assert (await device.next_event()).json() == created
