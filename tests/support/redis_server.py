"""A real ``redis-server`` for tests: started on a free port in a temp dir.

It persists nothing (``--save ""``, no AOF), listens on loopback only, and
can be stopped and started again *on the same port*, which is how tests
simulate an outage: clients see their connections drop, then reconnect to
an empty Redis, as after a real restart.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from tests.support.processes import free_port

__all__ = ["RedisServer"]


class RedisServer:
    """One ``redis-server`` process.

    :param executable: the path of ``redis-server``.
    :param directory: its working directory (and log file's home).
    :param port: the port; a free one by default.  It stays the same across
        :meth:`stop` and :meth:`start`.
    """

    def __init__(self, executable: str, directory: str, port: int | None = None) -> None:
        self.executable = executable
        self.directory = directory
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_path = os.path.join(directory, f"redis-{self.port}.log")
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers ``PING``.

        :raises RuntimeError: it exited or did not answer within ``timeout``
            (the message quotes its log).
        """
        if self.running:
            return
        self._process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--dir", self.directory,
                "--logfile", self.log_path,
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}: {self._log_tail()}")
            if self.ping():
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s: {self._log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop it (SIGTERM, then SIGKILL) and wait until it has exited.

        Its clients' connections close, as in a crash; everything it held
        (heartbeat keys...) is gone.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self) -> None:
        """:meth:`stop`, then :meth:`start` on the same port."""
        self.stop()
        self.start()

    def ping(self) -> bool:
        """Whether it answers ``PING`` with ``+PONG`` right now."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return " | ".join(handle.read().strip().splitlines()[-5:])
        except OSError:
            return "(no log)"
