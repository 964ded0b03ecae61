"""The contract every broker keeps (``core.fanout.broker.Broker``).

After Mercure's transport tests: one suite, run against each implementation.
The tests parametrized by ``cluster`` run for both the in-process
:class:`LocalBroker` and the :class:`RedisBroker` (against a real
``redis-server``); the ones that need a second process, or an outage, use
``redis_cluster`` and run for Redis only.

A "node" here is one broker started the way ``server.py`` starts it, with
callbacks that record what they get: one node stands for one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.fanout.broker import LocalBroker
from core.fanout.messages import StreamMessage
from core.fanout.redis_broker import RedisBroker
from tests.support.checks import wait_until

pytestmark = pytest.mark.timeout(60)

#: Brokers in these tests heartbeat, probe and reconnect quickly, so that
#: outages are noticed and over in tenths of a second.
FAST = {"heartbeat_interval": 0.2, "backoff_min": 0.02, "backoff_max": 0.2, "connect_timeout": 1.0}

#: Messages to this user are the suite's own markers (see Cluster.settle).
MARKER_USER = "__marker__"


def message(cursor: int, user_id: str = "alice", event: str | None = None) -> StreamMessage:
    """A stream message with a recognisable payload."""
    return StreamMessage(user_id=user_id, cursor=cursor, event=event, data=f'{{"n":{cursor}}}')


class Node:
    """One started broker and everything its callbacks received.

    :ivar received: delivered messages, markers left out, in arrival order.
    :ivar resyncs: how often ``resync`` was called.
    :ivar stats: what the ``stats`` callback returns (tests change it).
    """

    def __init__(self, broker: Any, name: str) -> None:
        self.broker = broker
        self.name = name
        self.received: list[StreamMessage] = []
        self.markers: list[int] = []
        self.published: list[StreamMessage] = []
        self.resyncs = 0
        self.stats: dict[str, Any] = {"instanceId": name, "totalDevices": 0}
        self._arrived = asyncio.Event()

    def deliver(self, received: StreamMessage) -> None:
        """The ``deliver`` callback."""
        if received.user_id == MARKER_USER:
            self.markers.append(received.cursor)
        else:
            self.received.append(received)
        self._arrived.set()

    def resync(self) -> None:
        """The ``resync`` callback."""
        self.resyncs += 1
        self._arrived.set()

    def publish(self, sent: StreamMessage) -> None:
        """Publish through the broker, remembering what was sent."""
        self.published.append(sent)
        self.broker.publish(sent)

    async def wait_delivered(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds, re-checking at each delivery (no polling)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: condition not met within {timeout} s")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[StreamMessage]:
        """Wait until at least ``count`` messages have arrived; :returns: all of them."""
        await self.wait_delivered(lambda: len(self.received) >= count, timeout)
        return self.received


class Cluster:
    """Nodes of one broker kind; ``redis`` is the test's redis-server or None."""

    def __init__(self, kind: str, redis: Any = None) -> None:
        self.kind = kind
        self.redis = redis
        self.nodes: list[Node] = []
        self._probe: Node | None = None
        self._marker = 0

    def build(self, name: str, **options: Any) -> Any:
        """A broker of this kind, not started."""
        if self.kind == "local":
            return LocalBroker()
        return RedisBroker(self.redis.url, name, **{**FAST, **options})

    async def node(self, name: str | None = None, **options: Any) -> Node:
        """A started node (``options`` go to :class:`RedisBroker`)."""
        if self.kind == "redis" and self._probe is None:
            # Subscribed before any node publishes (pub/sub keeps nothing for
            # a later subscriber), and out of the instances list (no stats:
            # no heartbeat key).
            self._probe = await self._start("probe", listed=False)
        return await self._start(name or f"node-{len(self.nodes)}", **options)

    async def _start(self, name: str, listed: bool = True, **options: Any) -> Node:
        node = Node(self.build(name, **options), name)
        self.nodes.append(node)
        await node.broker.start(node.deliver, node.resync, (lambda: dict(node.stats)) if listed else None)
        return node

    async def settle(self, *nodes: Node) -> None:
        """Wait until whatever ``nodes`` published has reached every node it
        will reach, echoes included.

        In-process delivery is synchronous: nothing to wait for.  Over Redis,
        a probe process first sees each node's last message (so Redis has
        it), then publishes a marker; Redis sends one subscriber its messages
        in the order it took them, so a node that has the marker has had
        everything before it, including its own echoes.
        """
        probe = self._probe
        if probe is None:
            return
        for node in nodes:
            if node.published and node is not probe:
                last = node.published[-1]
                await probe.wait_delivered(lambda last=last: last in probe.received)
        self._marker += 1
        marker = self._marker
        probe.publish(StreamMessage(MARKER_USER, marker, None, "{}"))
        for node in nodes:
            if node is not probe:
                await node.wait_delivered(lambda node=node: marker in node.markers)

    async def close(self) -> None:
        """Close every node."""
        for node in self.nodes:
            await node.broker.close()


@pytest.fixture(params=["local", "redis"])
def cluster(request, io_loop):
    """Nodes of each broker kind in turn."""
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    nodes = Cluster(request.param, redis)
    yield nodes
    io_loop.run_sync(nodes.close)


@pytest.fixture
def redis_cluster(redis_server, io_loop):
    """Redis nodes sharing the test's redis-server."""
    nodes = Cluster("redis", redis_server)
    yield nodes
    io_loop.run_sync(nodes.close)


def logged_by(node: Node, caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records ``node``'s broker logged (several brokers share a logger here)."""
    return [record for record in caplog.records if getattr(record, "instance", None) == node.name]


async def wait_for_failed_attempts(node: Node, caplog: pytest.LogCaptureFixture, count: int) -> None:
    """Wait until ``node``'s broker has failed to reach Redis ``count`` times
    (each failure is a debug record; only the first of an outage a warning)."""
    caplog.set_level(logging.DEBUG, logger="notify.broker")

    def failures() -> int:
        return sum(1 for record in logged_by(node, caplog) if record.getMessage().startswith("Redis ") and " failed: " in record.getMessage())

    await wait_until(lambda: failures() >= count)


async def raw_publish(redis_server, channel: str, *payloads: bytes) -> None:
    """Put bytes on the channel directly, as a foreign or broken publisher would."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        for payload in payloads:
            await client.publish(channel, payload)
    finally:
        await client.aclose()


# -- every broker ----------------------------------------------------------------


async def test_publish_delivers_to_this_process_before_returning(cluster):
    node = await cluster.node()
    node.publish(message(1))
    assert node.received == [message(1)]


async def test_publish_delivers_to_this_process_exactly_once(cluster):
    node = await cluster.node()
    for cursor in (1, 2, 3):
        node.publish(message(cursor))
    await cluster.settle(node)
    assert node.received == [message(1), message(2), message(3)]


async def test_publish_does_not_raise_when_delivery_fails(cluster):
    broker = cluster.build("failing")
    cluster.nodes.append(Node(broker, "failing"))
    calls = []

    def deliver(received: StreamMessage) -> None:
        calls.append(received)
        raise RuntimeError("a bug in the SSE manager")

    await broker.start(deliver, lambda: None, lambda: {"instanceId": "failing"})
    broker.publish(message(1))
    assert calls == [message(1)]


async def test_a_running_broker_is_healthy(cluster):
    node = await cluster.node()
    assert node.broker.healthy()


async def test_instances_include_this_process_current_stats(cluster):
    node = await cluster.node()
    node.stats["totalDevices"] = 7
    instances = await node.broker.instances()
    assert instances[0] == {"instanceId": node.name, "totalDevices": 7}


async def test_close_stops_delivery(cluster):
    node = await cluster.node()
    await node.broker.close()
    node.publish(message(1))
    assert node.received == []


# -- Redis: several processes ---------------------------------------------------


async def test_publish_reaches_another_process_exactly_once(redis_cluster):
    a = await redis_cluster.node()
    b = await redis_cluster.node()
    a.publish(message(1))
    await redis_cluster.settle(a, b)
    assert b.received == [message(1)]


async def test_many_messages_reach_another_process_in_publish_order(redis_cluster):
    a = await redis_cluster.node()
    b = await redis_cluster.node()
    sent = [message(cursor, user_id=f"user-{cursor % 7}", event="job" if cursor % 3 else None) for cursor in range(1, 2001)]
    for item in sent:
        a.publish(item)
    assert await b.wait_for_messages(len(sent)) == sent
    await redis_cluster.settle(a, b)
    assert len(b.received) == len(sent)


async def test_a_message_from_this_instance_id_on_the_channel_is_ignored(redis_cluster, redis_server):
    a = await redis_cluster.node("a")
    b = await redis_cluster.node("b")
    # Not published through a's broker: only the origin says it is a's own.
    await raw_publish(redis_server, a.broker.channel, b"a\n" + message(1).to_json().encode())
    await b.wait_for_messages(1)
    await redis_cluster.settle(a, b)
    assert a.received == []
    assert b.received == [message(1)]


async def test_malformed_messages_are_skipped_without_breaking_the_subscription(redis_cluster, redis_server, caplog):
    caplog.set_level(logging.WARNING)
    a = await redis_cluster.node()
    await raw_publish(
        redis_server,
        a.broker.channel,
        b"no origin line",
        b"other\nnot json",
        b"other\n\xff\xfe",
        b'other\n{"user_id": "alice"}',
        b'other\n{"user_id": "alice", "cursor": "x", "event": null, "data": "{}"}',
        b'other\n{"user_id": "alice", "cursor": 1, "event": 5, "data": "{}"}',
        b"other\n[1, 2]",
        b"other\n" + b"[" * 100_000,
        b"other\n" + message(9).to_json().encode(),
    )
    assert await a.wait_for_messages(1) == [message(9)]
    assert a.broker.healthy()
    warnings = logged_by(a, caplog)
    # One warning however many bad messages (rate-limited), and no traceback.
    assert len(warnings) == 1 and "malformed" in warnings[0].getMessage()
    assert not any(record.exc_info for record in caplog.records)


async def test_instances_list_every_live_process(redis_cluster):
    a = await redis_cluster.node("a")
    b = await redis_cluster.node("b")
    b.stats["totalDevices"] = 3
    await b.broker.heartbeat()
    instances = await a.broker.instances()
    assert [instance["instanceId"] for instance in instances] == ["a", "b"]
    assert instances[1]["totalDevices"] == 3


async def test_a_closed_process_disappears_from_instances(redis_cluster):
    a = await redis_cluster.node("a")
    b = await redis_cluster.node("b")
    await b.broker.close()
    assert [instance["instanceId"] for instance in await a.broker.instances()] == ["a"]


async def test_a_process_that_stops_heartbeating_disappears_from_instances(redis_cluster):
    a = await redis_cluster.node("a")
    b = await redis_cluster.node("b", heartbeat_interval=0.05)
    # A crash: b's tasks stop without removing its key; it expires (3 beats).
    for task in b.broker._tasks:
        task.cancel()
    names = []

    async def only_a() -> bool:
        names[:] = [instance["instanceId"] for instance in await a.broker.instances()]
        return names == ["a"]

    for _ in range(100):
        if await only_a():
            break
        await asyncio.sleep(0.02)
    assert names == ["a"]


async def test_a_process_that_dropped_messages_asks_the_others_to_resync(redis_cluster):
    a = await redis_cluster.node("a", max_pending=2)
    b = await redis_cluster.node("b")
    # Published faster than the sender runs: the outbox keeps the last two.
    for cursor in range(1, 6):
        a.publish(message(cursor))
    await b.wait_delivered(lambda: b.resyncs == 1 and len(b.received) == 2)
    assert b.received == [message(4), message(5)]
    assert a.received == [message(cursor) for cursor in range(1, 6)]


async def test_a_closed_process_gets_nothing_from_the_others(redis_cluster):
    a = await redis_cluster.node()
    b = await redis_cluster.node()
    await a.broker.close()
    b.publish(message(1))
    await redis_cluster.settle(b)
    assert a.received == []


async def test_close_first_sends_what_was_already_published(redis_cluster):
    a = await redis_cluster.node()
    b = await redis_cluster.node()
    a.publish(message(1))
    await a.broker.close()
    assert await b.wait_for_messages(1) == [message(1)]


# -- Redis: outages -----------------------------------------------------------------


async def test_publish_never_raises_while_redis_is_down(redis_cluster, redis_server):
    a = await redis_cluster.node()
    redis_server.stop()
    for cursor in range(1, 101):
        a.publish(message(cursor))
    assert len(a.received) == 100


async def test_this_process_still_gets_its_own_messages_while_redis_is_down(redis_cluster, redis_server):
    a = await redis_cluster.node()
    redis_server.stop()
    await wait_until(lambda: not a.broker.healthy())
    a.publish(message(1))
    assert a.received == [message(1)]


async def test_a_broker_is_unhealthy_while_redis_is_down(redis_cluster, redis_server, caplog):
    a = await redis_cluster.node()
    redis_server.stop()
    await wait_for_failed_attempts(a, caplog, 3)
    assert not a.broker.healthy()


async def test_a_broker_is_healthy_again_after_redis_restarts(redis_cluster, redis_server):
    a = await redis_cluster.node()
    redis_server.stop()
    await wait_until(lambda: not a.broker.healthy())
    redis_server.start()
    await wait_until(a.broker.healthy)


async def test_resync_is_called_once_after_the_subscription_comes_back(redis_cluster, redis_server, caplog):
    a = await redis_cluster.node()
    redis_server.stop()
    await wait_for_failed_attempts(a, caplog, 3)
    redis_server.start()
    await a.wait_delivered(lambda: a.resyncs >= 1)
    await redis_cluster.settle(a)
    assert a.resyncs == 1


async def test_delivery_between_processes_resumes_after_an_outage(redis_cluster, redis_server):
    a = await redis_cluster.node()
    b = await redis_cluster.node()
    redis_server.stop()
    await wait_until(lambda: not a.broker.healthy() and not b.broker.healthy())
    redis_server.start()
    await wait_until(lambda: a.broker.healthy() and b.broker.healthy())
    a.publish(message(1))
    assert await b.wait_for_messages(1) == [message(1)]


async def test_an_outage_logs_one_warning_and_no_traceback(redis_cluster, redis_server, caplog):
    a = await redis_cluster.node()
    redis_server.stop()
    await wait_until(lambda: not a.broker.healthy())
    for cursor in range(1, 51):
        a.publish(message(cursor))
    await wait_for_failed_attempts(a, caplog, 5)
    redis_server.start()
    await wait_until(a.broker.healthy)
    warnings = [record for record in logged_by(a, caplog) if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert "unreachable" in warnings[0].getMessage()
    assert not any(record.exc_info for record in caplog.records)


async def test_a_broker_started_without_redis_reports_down_and_connects_later(redis_server):
    redis_server.stop()
    broker = RedisBroker(redis_server.url, "late", **FAST)
    node = Node(broker, "late")
    try:
        await broker.start(node.deliver, node.resync, lambda: dict(node.stats))
        assert not broker.healthy()
        broker.publish(message(1))
        assert node.received == [message(1)]
        redis_server.start()
        await wait_until(broker.healthy)
        # Streams opened meanwhile may have missed other processes' messages.
        assert node.resyncs == 1
    finally:
        await broker.close()


async def test_close_while_redis_is_down_returns_promptly(redis_cluster, redis_server):
    a = await redis_cluster.node()
    redis_server.stop()
    a.publish(message(1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await a.broker.close()
    assert loop.time() - started < 2.0
