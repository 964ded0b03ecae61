"""``python server.py ...`` in a subprocess, the way an operator starts it.

For the tests that run the product as a separate process (the command
line, ``--processes``, clusters, nginx in front, the API fuzzer): start
``sys.executable server.py`` from the repository root with every
``NOTIFY_*`` variable of the test runner's environment removed, wait until
it answers ``/health``, talk to it over loopback with the standard library,
and kill it at the end whatever happened.  Every argument list, stderr and
answer goes past the leak scanner (:mod:`tests.support.leaks`).

Another process's state has no event this process can await, so waits here
poll a condition with a deadline (:func:`wait_for`); tests on an in-process
server use :func:`tests.support.checks.wait_until` instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support import leaks

#: The repository root: where ``server.py`` runs from.
ROOT = Path(__file__).resolve().parents[2]
#: The JWT secret of servers started here (``--jwt-secret``).
SECRET = "cli-test-secret-" + "k" * 24
#: Seconds a server may take to answer /health after it was started.
START_TIMEOUT = 10.0
#: Seconds the contract allows for a graceful shutdown.
SHUTDOWN_LIMIT = 10.0
#: Seconds between two checks of another process's state.
POLL = 0.02


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any ``NOTIFY_*``, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(variables)
    return env


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``address`` right now."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def sqlite_url(tmp_path: Path, name: str = "notify.db") -> str:
    """A ``--db-url`` for a fresh SQLite file under ``tmp_path``."""
    return f"sqlite:///{tmp_path / name}"


def need(program: str) -> str:
    """The path of ``program``; skip the test if it is missing (fail under CI)."""
    path = shutil.which(program)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is required under CI but is not installed")
        pytest.skip(f"{program} is not installed")
    return path


def token_for(user_id: str, role: str = "user", secret: str = SECRET) -> str:
    """A JWT signed as an external identity provider would sign it."""
    return jwt.encode({"sub": user_id, "role": role, "exp": int(time.time()) + 600}, secret, algorithm="HS256")


def wait_for(condition: Callable[[], bool], timeout: float, what: Callable[[], str] | str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds.

    Only for the state of other processes (a log line, a pid, a port):
    nothing there can be awaited as an event.

    :param what: what is awaited, for the failure message (a callable is
        called then, to describe the state at that moment).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(POLL)


# -- commands that run to their end ---------------------------------------------------------


@dataclasses.dataclass
class Finished:
    """A command that ran to its end."""

    returncode: int
    stdout: str
    stderr: str


def run(args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 15) -> Finished:
    """Run ``python server.py *args`` to completion (killed after ``timeout``).

    Its stderr is scanned for the credentials of the run (stdout is where
    ``issue-token`` prints its token on purpose).
    """
    leaks.note_argv(args, env)
    done = subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    leaks.observe(done.stderr, f"stderr of server.py {args[0] if args else ''}")
    return Finished(done.returncode, done.stdout, done.stderr)


def assert_clean_failure(result: Finished, fragment: str, returncode: int | None = None) -> str:
    """Assert a refused start: non-zero exit, no traceback, an error line with ``fragment``.

    :returns: the error line.
    """
    assert result.returncode != 0, result
    if returncode is not None:
        assert result.returncode == returncode, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("server.py: error: "), result.stderr
    assert fragment in last, result.stderr
    return last


# -- servers --------------------------------------------------------------------------------


def http_request(host: str, port: int, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 5) -> tuple[int, Any]:
    """One HTTP request on a fresh connection: ``(status, JSON body or None)``."""
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    leaks.observe_exchange(method, path, headers, body, response.status, raw)
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, None


@dataclasses.dataclass
class ServerProcess:
    """A server running in a subprocess, and where its output goes."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """``(status, parsed JSON body or None)`` of one request."""
        return http_request(self.host, self.port, method, path, body, token)

    def login(self, user_id: str, password: str) -> tuple[int, Any]:
        """``POST /api/v1/auth/login``."""
        return self.request("POST", "/api/v1/auth/login", {"userId": user_id, "password": password})


def wait_healthy(process: subprocess.Popen[bytes], host: str, port: int, log_path: Path) -> None:
    """Poll ``/health`` until it answers 200; fail if the process dies or time runs out."""
    status: int | None = None

    def healthy() -> bool:
        nonlocal status
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} before serving:\n{log_path.read_text()}")
        try:
            status, body = http_request(host, port, "GET", "/health", timeout=1)
        except OSError:
            status, body = None, None
        if status == 200:
            assert body["status"] == "ok"
        return status == 200

    wait_for(healthy, START_TIMEOUT, lambda: f"the server to answer /health on {host}:{port} (last status {status}):\n{log_path.read_text()}")


@contextlib.contextmanager
def serving(tmp_path: Path, args: Sequence[str], host: str = "127.0.0.1", port: int | None = None, env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """Start ``python server.py *args``, wait until it is healthy, kill it at the end.

    :param port: where to poll; ``None`` picks a free port and passes it as
        ``--port`` (give one when ``args`` or ``env`` choose it).
    """
    if port is None:
        port = free_port(host)
        args = [*args, "--port", str(port)]
    log_path = tmp_path / f"server-{port}.log"
    leaks.note_argv(args, env)
    with open(log_path, "wb") as stderr, open(tmp_path / f"server-{port}.out", "wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "server.py", *args],
            cwd=ROOT,
            env=dict(env) if env is not None else clean_env(),
            stdout=stdout,
            stderr=stderr,
        )
    try:
        wait_healthy(process, host, port, log_path)
        yield ServerProcess(process, host, port, log_path)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        leaks.observe_file(log_path, f"stderr of the server on port {port}")
