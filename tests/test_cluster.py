"""Two real server processes as one service: real Redis, real PostgreSQL.

Each test starts a ``redis-server`` on a free port, a fresh PostgreSQL
schema (always PostgreSQL, whatever ``NOTIFY_TEST_DB`` says: several
processes share one database here) and two ``python server.py`` processes
on different ports with the same ``--redis-url`` and ``--db-url``.  Several
users each hold a device on *both* processes; notifications are created
concurrently through both; then one thing goes wrong (a process is killed
with SIGKILL, Redis restarts, a process is stopped with SIGTERM) while the
streams are open and notifications keep coming.

Clients behave like a browser's ``EventSource`` behind a load balancer:
each reads its stream in a background thread and, when the stream ends
(connection dropped, or the chunked terminator), reconnects at once to the
*other* process with ``Last-Event-ID``.  Publishers are threads that create
notifications one after another; one whose process goes away retries the
create on the other process, as a load balancer would, but only if it got
no 201 (a create that got no answer may or may not have been stored).

So what counts is what the database holds: at the end the user's list is
read from a surviving process, and every device of the user must have
received exactly that list as notification events, in creation order, once,
with cursors 1..n.  A last "marker" notification per user closes each run:
a device that ends with the marker and nothing twice before it got nothing
twice.

Every wait is a bounded wait on a condition; server processes are killed by
pid when the test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.blocking_sse import BlockingStream
from tests.support.processes import SECRET, SHUTDOWN_LIMIT, ServerProcess, http_request, serving, token_for, wait_for
from tests.support.redis_server import RedisServer
from tests.support.sse import Event

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

#: Users, each with one device on each process.
USERS = ("alice", "bob", "carol", "dave")
#: Seconds for every device to receive what the database holds (loopback:
#: well under a second normally; Redis's reconnect backoff may add a few).
DELIVERY = 15.0
#: Seconds for both processes' brokers to be back after Redis restarts
#: (their backoff reaches 1.6 s after a 1-2 s outage; 5 s at most).
RECOVERY = 15.0


# -- the cluster ----------------------------------------------------------------------


class Cluster:
    """Two ``server.py`` processes sharing :attr:`redis` and one PostgreSQL schema."""

    def __init__(self, redis: RedisServer, servers: list[ServerProcess]) -> None:
        self.redis = redis
        self.servers = servers

    def health(self, server: ServerProcess) -> tuple[int | None, Any]:
        """``(status, body)`` of ``GET /health`` (None when nothing answers)."""
        try:
            return http_request(server.host, server.port, "GET", "/health", timeout=2)
        except (OSError, http.client.HTTPException):
            return None, None

    def broker_ok(self, server: ServerProcess) -> bool:
        status, body = self.health(server)
        return status == 200 and body["checks"] == {"database": "ok", "broker": "ok"}

    def broker_down(self, server: ServerProcess) -> bool:
        status, body = self.health(server)
        return status == 503 and body["checks"]["broker"] == "down"

    def notifications(self, server: ServerProcess, user_id: str) -> list[dict[str, Any]]:
        """The user's notifications in creation order, as ``server`` lists them (every page)."""
        items: list[dict[str, Any]] = []
        path = f"/api/v1/users/{user_id}/notifications?limit=100"
        before = None
        while True:
            status, body = http_request(server.host, server.port, "GET", path + (f"&before={before}" if before else ""), token=token_for(user_id))
            assert status == 200, body
            items.extend(body["items"])
            before = body["nextBefore"]
            if before is None:
                return items[::-1]

    def create(self, server: ServerProcess, user_id: str, message: str) -> tuple[int, Any]:
        """Create one notification through ``server``: ``(status, body)``."""
        return http_request(server.host, server.port, "POST", f"/api/v1/users/{user_id}/notifications",
                            {"type": "info", "message": message}, token_for(user_id))

    def assert_no_traceback(self) -> None:
        for server in self.servers:
            assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer, new_postgres_url) -> Iterator[Cluster]:
    """Two processes on free ports, one Redis, one fresh PostgreSQL schema; killed by pid after the test."""
    args = ["--jwt-secret", SECRET, "--redis-url", redis_server.url, "--db-url", new_postgres_url("cluster"),
            "--keepalive-interval", "1"]
    with contextlib.ExitStack() as stack:
        # One after the other: the second finds the schema made by the first.
        servers = [stack.enter_context(serving(tmp_path, args)) for _ in range(2)]
        yield Cluster(redis_server, servers)


# -- clients -------------------------------------------------------------------------


@dataclasses.dataclass
class Connection:
    """One stream a client opened: where, and how it ended."""

    instance_id: str
    port: int
    last_event_id: str | None
    #: "terminator" (the chunked end), "dropped" (closed without it), or None (still open).
    end: str | None = None


class Client:
    """A device of ``user_id``: reads its stream in a thread, reconnecting like EventSource.

    It starts on ``servers[first]``.  When a stream ends it reconnects at once
    to the other process with ``Last-Event-ID`` (the last ``id:`` it saw).
    """

    def __init__(self, cluster: Cluster, user_id: str, first: int) -> None:
        self.cluster = cluster
        self.user_id = user_id
        self.index = first
        self.connections: list[Connection] = []
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self._last_id: str | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"client-{user_id}-{first}", daemon=True)
        self._thread.start()

    # -- what the test reads --

    @property
    def messages(self) -> list[Event]:
        with self._changed:
            return [event for event in self.events if event.type == "message"]

    @property
    def server(self) -> ServerProcess:
        return self.cluster.servers[self.index]

    def wait_connected(self, timeout: float = 5.0) -> None:
        if not self._connected.wait(timeout):
            pytest.fail(f"{self} did not connect within {timeout} s")
        self.raise_error()

    def wait_messages(self, count: int, deadline: float) -> None:
        """Wait until at least ``count`` notification events have arrived, until ``deadline`` (monotonic)."""
        with self._changed:
            while len([e for e in self.events if e.type == "message"]) < count and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        self.raise_error()
        got = len(self.messages)
        assert got >= count, f"{self}: {got} of {count} notifications in time; connections {self.connections}"

    def wait_reconnected(self, timeout: float) -> None:
        """Wait until the first stream has ended and a second one is open."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.connections) < 2 and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        self.raise_error()
        assert len(self.connections) >= 2, f"{self} did not reconnect within {timeout} s: {self.connections}"

    def raise_error(self) -> None:
        if self.error is not None:
            raise AssertionError(f"{self} failed: {self.error!r}") from self.error

    def stop(self) -> None:
        """Ask the reader to stop (it checks every 0.2 s); :meth:`join` waits for it."""
        self._stop.set()

    def join(self) -> None:
        self._thread.join(5)
        assert not self._thread.is_alive(), f"{self} did not stop"

    def __repr__(self) -> str:
        return f"<device of {self.user_id} on :{self.server.port}>"

    # -- the reader thread --

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._read_one_stream()
                # EventSource reconnects; behind a load balancer, to a process still running.
                self.index = 1 - self.index
        except BaseException as exc:  # reported to the test by wait_* / raise_error
            if not self._stop.is_set():
                with self._changed:
                    self.error = exc
                    self._changed.notify_all()
        finally:
            self._connected.set()

    def _read_one_stream(self) -> None:
        server = self.server
        headers = {"Authorization": f"Bearer {token_for(self.user_id)}"}
        if self._last_id is not None:
            headers["Last-Event-ID"] = self._last_id
        stream = BlockingStream(server.host, server.port, f"/api/v1/users/{self.user_id}/notifications/stream", headers)
        try:
            assert stream.status == 200, stream.raw_body
            ready = stream.ready()
            connection = Connection(ready["instanceId"], server.port, self._last_id)
            with self._changed:
                self.connections.append(connection)
                self._changed.notify_all()
            self._connected.set()
            while not self._stop.is_set():
                try:
                    event = stream.next_event(timeout=0.2)
                except TimeoutError:
                    if stream.decoder.finished:  # ended cleanly; the socket may stay open
                        break
                    continue
                except ConnectionError:
                    break
                with self._changed:
                    self.events.append(event)
                    if event.id is not None:
                        self._last_id = event.id
                    self._changed.notify_all()
            end = "terminator" if stream.decoder.finished else "dropped"
            with self._changed:
                connection.end = None if self._stop.is_set() else end
                self._changed.notify_all()
        finally:
            stream.close()


@contextlib.contextmanager
def devices(cluster: Cluster, users: Sequence[str] = USERS) -> Iterator[dict[str, list[Client]]]:
    """One device per user on each process (streams open and ready); all stopped at the end."""
    clients: dict[str, list[Client]] = {user: [] for user in users}
    try:
        for user in users:
            for index in range(len(cluster.servers)):
                clients[user].append(Client(cluster, user, index))
        for user_clients in clients.values():
            for client in user_clients:
                client.wait_connected()
        instances = {client.connections[0].instance_id for client in clients[users[0]]}
        assert len(instances) == 2, instances
        yield clients
    finally:
        every = [client for user_clients in clients.values() for client in user_clients]
        for client in every:
            client.stop()
        for client in every:
            client.join()


# -- publishers ----------------------------------------------------------------------


@dataclasses.dataclass
class Created:
    """One create a publisher made: the message and who answered what."""

    user_id: str
    message: str
    #: ``(port, status or the exception's name)`` of each try, in order.
    tries: list[tuple[int, Any]]
    notification: dict[str, Any] | None = None


class Publisher:
    """Creates notifications for ``users`` in turn through ``servers[index]``, in a thread.

    It creates as many as it is allowed (:meth:`allow`), one after the other.
    A create that gets no 201 (no answer: the process died or stopped) is
    retried on the other process, which it uses from then on.
    ``after(n, action)`` runs ``action`` right after the ``n``-th create, in
    the publisher's thread, while the other publishers keep going.
    """

    def __init__(self, cluster: Cluster, name: str, index: int, users: Sequence[str] = USERS) -> None:
        self.cluster = cluster
        self.name = name
        self.index = index
        self.users = users
        self.created: list[Created] = []
        self.error: BaseException | None = None
        self._allowed = 0
        self._actions: dict[int, Callable[[], None]] = {}
        self._changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"publisher-{name}", daemon=True)
        self._thread.start()

    def after(self, count: int, action: Callable[[], None]) -> None:
        self._actions[count] = action

    def allow(self, count: int) -> None:
        with self._changed:
            self._allowed += count
            self._changed.notify_all()

    def wait_done(self, timeout: float = 20.0) -> None:
        """Wait until every allowed create has been made."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.created) < self._allowed and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        if self.error is not None:
            raise AssertionError(f"publisher {self.name} failed: {self.error!r}") from self.error
        assert len(self.created) == self._allowed, f"publisher {self.name}: {len(self.created)} of {self._allowed} created"

    def stop(self) -> None:
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            sequence = 0
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._stop or len(self.created) < self._allowed)
                    if self._stop:
                        return
                user = self.users[sequence % len(self.users)]
                sequence += 1
                entry = Created(user, f"{user} #{sequence} via {self.name}", [])
                self._create(entry)
                with self._changed:
                    self.created.append(entry)
                    self._changed.notify_all()
                action = self._actions.pop(len(self.created), None)
                if action is not None:
                    action()
        except BaseException as exc:
            with self._changed:
                self.error = exc
                self._changed.notify_all()

    def _create(self, entry: Created) -> None:
        for _ in range(2):
            server = self.cluster.servers[self.index]
            try:
                status, body = self.cluster.create(server, entry.user_id, entry.message)
            except (OSError, http.client.HTTPException) as exc:
                status, body = type(exc).__name__, None
            entry.tries.append((server.port, status))
            if status == 201:
                entry.notification = body
                return
            # No 201: maybe stored, maybe not. Like a load balancer, go to
            # the other process (and stay there).
            self.index = 1 - self.index
        raise AssertionError(f"no process created {entry}")


@contextlib.contextmanager
def publishers(cluster: Cluster) -> Iterator[list[Publisher]]:
    """One publisher per process; stopped at the end."""
    running = [Publisher(cluster, f"p{index}", index) for index in range(len(cluster.servers))]
    try:
        yield running
    finally:
        for publisher in running:
            publisher.stop()


# -- the end state -------------------------------------------------------------------


def assert_every_device_has_every_notification_once_in_order(
    cluster: Cluster, clients: dict[str, list[Client]], via: ServerProcess, running: list[Publisher]
) -> None:
    """Each device received exactly the user's stored list, in order, once, cursors 1..n.

    A marker notification per user, created through ``via`` after
    everything else, closes the run: what a device has once the marker is
    there is all it will get before it.
    """
    markers = {}
    deadline = time.monotonic() + DELIVERY
    for user in clients:
        status, body = cluster.create(via, user, f"{user} marker")
        assert status == 201, body
        markers[user] = body
    for user, user_clients in clients.items():
        expected = cluster.notifications(via, user)
        assert expected[-1] == markers[user]
        # Every create that got a 201 is stored once, in each publisher's order.
        for publisher in running:
            sent = [entry.notification for entry in publisher.created if entry.user_id == user and entry.notification]
            assert [item for item in expected if item["notificationId"] in {n["notificationId"] for n in sent}] == sent
        for client in user_clients:
            client.wait_messages(len(expected), deadline)
            messages = client.messages
            assert [event.json() for event in messages] == expected, (client, client.connections)
            assert [int(event.id) for event in messages] == list(range(1, len(expected) + 1)), client
            # Nothing else came: no reset (history reaches back), no other events.
            assert [event.type for event in client.events] == ["message"] * len(expected), client


def devices_on(clients: dict[str, list[Client]], server: ServerProcess) -> list[Client]:
    """The devices whose first stream was on ``server``."""
    return [client for user_clients in clients.values() for client in user_clients if client.connections[0].port == server.port]


def once_receiving(devices: list[Client], action: Callable[[], None]) -> Callable[[], None]:
    """``action``, run once every one of ``devices`` has received a notification.

    So that the streams are mid-way, and every device has a Last-Event-ID to
    resume from (without one, a reconnect starts from now, as in a browser).
    """

    def run() -> None:
        wait_for(lambda: all(device.messages for device in devices), 5, "the devices to receive a notification")
        action()

    return run


def all_succeeded_first_time(running: list[Publisher]) -> None:
    for publisher in running:
        for entry in publisher.created:
            assert len(entry.tries) == 1 and entry.tries[0][1] == 201, (publisher.name, entry)


# -- the tests -----------------------------------------------------------------------


def assert_never_disconnected(clients: dict[str, list[Client]]) -> None:
    """Every device kept its first connection throughout the test."""
    for user_clients in clients.values():
        for client in user_clients:
            assert [connection.end for connection in client.connections] == [None], client


def test_notifications_created_on_both_processes_reach_every_device_on_both_once_in_order(cluster):
    with devices(cluster) as clients, publishers(cluster) as running:
        for publisher in running:
            publisher.allow(10 * len(USERS))
        for publisher in running:
            publisher.wait_done()
        all_succeeded_first_time(running)
        assert_every_device_has_every_notification_once_in_order(cluster, clients, cluster.servers[0], running)
        assert_never_disconnected(clients)
    cluster.assert_no_traceback()


def test_devices_of_a_killed_process_resume_on_the_other_with_nothing_lost_or_repeated(cluster):
    victim, survivor = cluster.servers
    with devices(cluster) as clients, publishers(cluster) as running:
        on_victim = devices_on(clients, victim)
        to_victim, to_survivor = running

        def kill() -> None:
            wait_for(lambda: any(entry.tries[0] == (victim.port, 201) for entry in list(to_victim.created)), 5,
                     "a create through the victim")
            victim.process.send_signal(signal.SIGKILL)

        # Mid-stream: both publishers going, the victim's streams receiving.
        to_survivor.after(3 * len(USERS), once_receiving(on_victim, kill))
        for publisher in running:
            publisher.allow(12 * len(USERS))
        for client in on_victim:
            client.wait_reconnected(DELIVERY)
        assert victim.process.wait(timeout=5) == -signal.SIGKILL
        for publisher in running:
            publisher.wait_done()
        # Some after the handover too, all through the survivor now.
        for publisher in running:
            publisher.allow(3 * len(USERS))
        for publisher in running:
            publisher.wait_done()
        # The victim stored some before it died; the survivor took the rest.
        assert any(entry.tries[0] == (victim.port, 201) for entry in to_victim.created)
        assert all(entry.tries[-1] == (survivor.port, 201) for entry in to_victim.created[-3 * len(USERS):])

        assert_every_device_has_every_notification_once_in_order(cluster, clients, survivor, running)
        for client in on_victim:
            first, second = client.connections
            assert first.end == "dropped" and first.port == victim.port, client.connections
            assert second.port == survivor.port and second.end is None, client.connections
            assert second.last_event_id is not None, client.connections
        for client in devices_on(clients, survivor):
            assert [connection.end for connection in client.connections] == [None], client
    assert "Traceback" not in survivor.log(), survivor.log()


def test_devices_on_both_processes_catch_up_after_redis_restarts_with_nothing_lost_or_repeated(cluster):
    a, b = cluster.servers
    with devices(cluster) as clients, publishers(cluster) as running:
        # Redis goes away mid-stream, while both publishers are creating.
        running[0].after(2 * len(USERS), cluster.redis.stop)
        for publisher in running:
            publisher.allow(5 * len(USERS))
        for publisher in running:
            publisher.wait_done()
        wait_for(lambda: cluster.broker_down(a) and cluster.broker_down(b), 10, "both processes to report the broker down")
        # Created on both while Redis is down: each process pushes to its own devices only.
        for publisher in running:
            publisher.allow(5 * len(USERS))
        for publisher in running:
            publisher.wait_done()
        cluster.redis.start()
        wait_for(lambda: cluster.broker_ok(a) and cluster.broker_ok(b), RECOVERY, "both processes to report the broker ok")
        # Nothing new yet that could reveal a gap: only the brokers' resync
        # can bring each device what the other process created meanwhile.
        deadline = time.monotonic() + DELIVERY
        for user, user_clients in clients.items():
            stored = cluster.notifications(a, user)
            for client in user_clients:
                client.wait_messages(len(stored), deadline)
        for publisher in running:
            publisher.allow(3 * len(USERS))
        for publisher in running:
            publisher.wait_done()
        all_succeeded_first_time(running)

        assert_every_device_has_every_notification_once_in_order(cluster, clients, a, running)
        assert_never_disconnected(clients)
    cluster.assert_no_traceback()


def test_devices_of_a_process_stopped_with_sigterm_resume_on_the_other_with_nothing_lost_and_it_exits_0(cluster):
    stopping, survivor = cluster.servers
    signalled: list[float] = []

    def stop() -> None:
        signalled.append(time.monotonic())
        stopping.process.send_signal(signal.SIGTERM)

    with devices(cluster) as clients, publishers(cluster) as running:
        on_stopping = devices_on(clients, stopping)
        running[1].after(3 * len(USERS), once_receiving(on_stopping, stop))
        for publisher in running:
            publisher.allow(12 * len(USERS))
        for client in on_stopping:
            client.wait_reconnected(SHUTDOWN_LIMIT)
        assert stopping.process.wait(timeout=SHUTDOWN_LIMIT) == 0, stopping.log()
        assert time.monotonic() - signalled[0] < SHUTDOWN_LIMIT
        for publisher in running:
            publisher.wait_done()
        for publisher in running:
            publisher.allow(3 * len(USERS))
        for publisher in running:
            publisher.wait_done()

        assert_every_device_has_every_notification_once_in_order(cluster, clients, survivor, running)
        for client in on_stopping:
            first, second = client.connections
            # The clean end that makes a browser reconnect rather than report an error.
            assert first.end == "terminator" and first.port == stopping.port, client.connections
            assert second.port == survivor.port and second.end is None, client.connections
            assert second.last_event_id is not None, client.connections
        for client in devices_on(clients, survivor):
            assert [connection.end for connection in client.connections] == [None], client
    cluster.assert_no_traceback()
