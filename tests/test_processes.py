"""``python server.py --processes N``, run for real.

Each test starts ``server.py --processes 2`` in a subprocess, with a real
``redis-server`` (the broker that lets the processes see each other's
publishes) and a fresh database (a SQLite file, or a PostgreSQL schema in
the PostgreSQL pass), and talks to it over loopback.  Which process answers
a connection is the kernel's choice, so tests that need one connection on
each process open connections until they have one on each (bounded).
Every wait is for a condition with a deadline; processes left over by a
failing test are killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import leaks
from tests.support.blocking_sse import BlockingStream
from tests.support.processes import (
    ROOT,
    SECRET,
    SHUTDOWN_LIMIT,
    assert_clean_failure,
    clean_env,
    free_port,
    http_request,
    run,
    token_for,
    wait_for,
)
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

#: Seconds for both processes to start (each starts once the previous serves).
BOTH_STARTED = 15.0
#: Fresh connections tried before concluding the kernel never picks a process.
MAX_TRIES = 200


# -- processes ------------------------------------------------------------------


def parent_pid_of(pid: int) -> int | None:
    """The parent of ``pid`` (None if it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            state, ppid = handle.read().rpartition(")")[2].split()[:2]
    except (OSError, ValueError):
        return None
    return None if state == "Z" else int(ppid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not count)."""
    return parent_pid_of(pid) is not None


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    return {int(entry) for entry in os.listdir("/proc") if entry.isdigit() and parent_pid_of(int(entry)) == pid}


class Cluster:
    """``server.py --processes 2`` in a subprocess, and how to reach it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.host = "127.0.0.1"
        self.port = port
        self.log_path = log_path
        self.children = children_of(process.pid)

    def log(self) -> str:
        """Everything the processes wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def instance_id(self) -> str:
        """The instance id of whichever process answers a fresh connection."""
        status, body = http_request(self.host, self.port, "GET", "/api/v1/stats")
        assert status == 200, body
        return body["instanceId"]

    def stream(self, user_id: str) -> BlockingStream:
        """Open ``user_id``'s stream on whichever process takes the connection."""
        path = f"/api/v1/users/{user_id}/notifications/stream"
        stream = BlockingStream(self.host, self.port, path, {"Authorization": f"Bearer {token_for(user_id)}"})
        assert stream.status == 200, stream.raw_body
        return stream

    def stream_on_each(self, user_id: str) -> dict[str, BlockingStream]:
        """One open stream of ``user_id`` on each process, by instance id."""
        streams: dict[str, BlockingStream] = {}
        for _ in range(MAX_TRIES):
            stream = self.stream(user_id)
            instance = stream.ready()["instanceId"]
            if instance in streams:
                stream.close()
            else:
                streams[instance] = stream
            if len(streams) == 2:
                return streams
        pytest.fail(f"{MAX_TRIES} connections all went to {list(streams)}")


@contextlib.contextmanager
def cluster(tmp_path: Path, redis: RedisServer, db_url: str, *extra: str) -> Iterator[Cluster]:
    """Start ``server.py --processes 2``; wait until both processes serve; clean up whatever happens."""
    port = free_port()
    log_path = tmp_path / f"processes-{port}.log"
    args = [
        sys.executable, "server.py", "--processes", "2", "--port", str(port), "--jwt-secret", SECRET,
        "--redis-url", redis.url, "--db-url", db_url, *extra,
    ]
    leaks.note_argv(args)
    with open(log_path, "wb") as stderr:
        process = subprocess.Popen(args, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    seen: set[int] = set()
    try:
        # The supervisor's line once every process serves: nothing else
        # tells another process that both have started.
        def started() -> bool:
            if process.poll() is not None:
                pytest.fail(f"server.py exited with {process.returncode}:\n{log_path.read_text()}")
            return "2 processes serving" in log_path.read_text(errors="replace")

        wait_for(started, BOTH_STARTED, "both processes to serve")
        running = Cluster(process, port, log_path)
        assert len(running.children) == 2, running.log()
        seen |= running.children
        yield running
        seen |= children_of(process.pid)
    finally:
        seen |= children_of(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SHUTDOWN_LIMIT + 2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        leaks.observe_file(log_path, f"stderr of server.py --processes 2 on port {port}")


# -- refusing to start ------------------------------------------------------------------


def test_processes_without_redis_url_refuse_to_start(tmp_path):
    result = run(["--processes", "2", "--jwt-secret", SECRET, "--db-url", f"sqlite:///{tmp_path}/n.db"])
    assert_clean_failure(result, "--processes 2 needs --redis-url", returncode=2)


def test_processes_over_an_in_memory_database_refuse_to_start():
    result = run(["--processes", "2", "--jwt-secret", SECRET, "--redis-url", "redis://127.0.0.1:1/0",
                  "--db-url", "sqlite:///:memory:"])
    assert_clean_failure(result, "needs a database the processes share", returncode=2)


def test_a_process_that_cannot_start_stops_the_start_with_its_error():
    # Nothing listens on port 1: the first process cannot open the database.
    result = run(["--processes", "2", "--jwt-secret", SECRET, "--redis-url", "redis://127.0.0.1:1/0",
                  "--db-url", "postgresql://postgres@127.0.0.1:1/none", "--port", str(free_port())])
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "server.py: error: cannot open the database" in result.stderr, result.stderr


def test_processes_on_a_port_taken_even_by_a_reuse_port_group_exit_with_a_clear_error(tmp_path):
    # Another server's reuse-port sockets would accept a reuse-port bind and
    # silently share its traffic with us: it must be refused instead.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["--processes", "2", "--jwt-secret", SECRET, "--redis-url", "redis://127.0.0.1:1/0",
                      "--db-url", f"sqlite:///{tmp_path}/n.db", "--port", str(port)])
    assert_clean_failure(result, f"cannot listen on 127.0.0.1:{port}", returncode=1)


# -- serving ----------------------------------------------------------------------------


def test_two_processes_serve_one_port_each_with_its_own_instance_id(tmp_path, redis, new_db_url):
    with cluster(tmp_path, redis, new_db_url("processes")) as running:
        status, body = http_request(running.host, running.port, "GET", "/health")
        assert (status, body["status"]) == (200, "ok")
        seen: set[str] = set()
        for _ in range(MAX_TRIES):
            seen.add(running.instance_id())
            if len(seen) == 2:
                break
        assert len(seen) == 2, f"{MAX_TRIES} connections all went to {seen}"


def test_a_notification_reaches_the_users_streams_on_both_processes(tmp_path, redis, new_db_url):
    with cluster(tmp_path, redis, new_db_url("processes")) as running:
        streams = running.stream_on_each("alice")
        status, created = http_request(running.host, running.port, "POST", "/api/v1/users/alice/notifications",
                                       {"type": "info", "message": "to every device"}, token_for("alice"))
        assert status == 201, created
        for instance, stream in streams.items():
            event = stream.next_event()
            assert (event.type, event.json()) == ("message", created), instance
            stream.close()


def test_processes_with_a_redis_database_and_namespace_reach_each_others_streams(tmp_path, redis, new_db_url):
    url = f"redis://{redis.host}:{redis.port}/3"
    with cluster(tmp_path, redis, new_db_url("processes"), "--redis-url", url, "--redis-namespace", "blue") as running:
        streams = running.stream_on_each("alice")
        status, created = http_request(running.host, running.port, "POST", "/api/v1/users/alice/notifications",
                                       {"type": "info", "message": "to every device"}, token_for("alice"))
        assert status == 201, created
        for instance, stream in streams.items():
            event = stream.next_event()
            assert (event.type, event.json()) == ("message", created), instance
            stream.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_streams_on_both_processes_with_the_terminator_and_exits_0(tmp_path, redis, new_db_url, signum):
    with cluster(tmp_path, redis, new_db_url("processes")) as running:
        streams = running.stream_on_each("alice")
        signalled = time.monotonic()
        running.process.send_signal(signum)
        for instance, stream in streams.items():
            assert stream.read_to_end(timeout=SHUTDOWN_LIMIT), (instance, stream.raw_body[-200:])
            assert stream.raw_body.endswith(b"0\r\n\r\n")
            stream.close()
        assert running.process.wait(timeout=SHUTDOWN_LIMIT) == 0
        assert time.monotonic() - signalled < SHUTDOWN_LIMIT
        assert not any(alive(pid) for pid in running.children)
        assert "Traceback" not in running.log(), running.log()


def test_a_process_that_dies_is_restarted(tmp_path, redis, new_db_url):
    with cluster(tmp_path, redis, new_db_url("processes")) as running:
        victim, survivor = sorted(running.children)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(children_of(running.process.pid) - {victim}) == 2, 10, "a new process")
        (replacement,) = children_of(running.process.pid) - {survivor}
        # The new process serves: its instance id (which names its pid) answers.
        wait_for(lambda: f"-{replacement}-" in running.instance_id(), 10, "the new process to answer")
        assert running.process.poll() is None
        assert alive(survivor)
        assert "restarting it in" in running.log()


def test_processes_stop_when_their_parent_is_killed(tmp_path, redis, new_db_url):
    with cluster(tmp_path, redis, new_db_url("processes")) as running:
        running.process.kill()
        running.process.wait()
        # Orphans would keep serving the port with nobody to stop them.
        wait_for(lambda: not any(alive(pid) for pid in running.children), SHUTDOWN_LIMIT, "the orphaned processes to exit")


def test_sigusr1_to_the_parent_logs_the_state_of_every_process(tmp_path, redis, new_db_url):
    with cluster(tmp_path, redis, new_db_url("processes")) as running:
        running.process.send_signal(signal.SIGUSR1)

        def both_logged() -> bool:
            lines = [line for line in running.log().splitlines() if "[SSE State]" in line]
            return all(any(f"[{pid}]" in line for line in lines) for pid in running.children)

        wait_for(both_logged, 5, "a state line from each process")
