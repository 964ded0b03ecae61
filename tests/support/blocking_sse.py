"""A blocking SSE client over a plain socket, for servers in other processes.

The async :class:`tests.support.sse.SSEClient` runs on the test's IOLoop,
next to an in-process server.  Tests that drive real processes (``server.py
--processes``, nginx in front of servers) are plain synchronous tests; this
client reads the raw HTTP/1.1 response, undoes the chunked framing and
parses events and comments with the same parsers, with a deadline on every
wait instead of any sleep.
"""

from __future__ import annotations

import codecs
import socket
import time
from collections.abc import Mapping
from typing import Any

from tests.support.sse import ChunkedDecoder, Event, SSEParser


class BlockingStream:
    """``GET path`` on ``host:port``, then events as they arrive.

    :ivar status: the response status.
    :ivar headers: response header names (lower case) to values.
    :ivar raw_body: every body byte received, framing included.
    """

    def __init__(self, host: str, port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._events: list[Event] = []
        self._parser = SSEParser()
        self.decoder = ChunkedDecoder()
        # A chunk may end inside a multi-byte character.
        self._text = codecs.getincrementaldecoder("utf-8")()
        self.raw_body = b""
        self.closed = False
        try:
            self._read_head(timeout)
        except BaseException:
            self.sock.close()
            raise

    def _read_head(self, timeout: float) -> None:
        received = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in received:
            received += self._recv(deadline)
            if self.closed:
                raise ConnectionError(f"connection closed before the response head: {received!r}")
        head, _, rest = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._feed(rest)

    @property
    def comments(self) -> list[str]:
        """Every comment so far, without the colon and space (``"ping"``)."""
        return self._parser.comments

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("nothing arrived before the deadline")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("nothing arrived before the deadline") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
        return data

    def _feed(self, data: bytes) -> None:
        self.raw_body += data
        payload = self.decoder.feed(data) if self.chunked else data
        if payload:
            self._events.extend(self._parser.feed(self._text.decode(payload)))

    def _read_more(self, deadline: float) -> None:
        data = self._recv(deadline)
        if self.closed:
            raise ConnectionError("the stream ended")
        self._feed(data)

    def next_event(self, timeout: float = 5.0) -> Event:
        """The next event (comments are collected in :attr:`comments`)."""
        deadline = time.monotonic() + timeout
        while not self._events:
            self._read_more(deadline)
        return self._events.pop(0)

    def wait_comment(self, text: str, timeout: float = 5.0) -> None:
        """Read until a comment ``text`` (e.g. ``"ping"``) has arrived; events stay queued."""
        deadline = time.monotonic() + timeout
        while text not in self.comments:
            self._read_more(deadline)

    def ready(self, timeout: float = 5.0) -> dict[str, Any]:
        """The data of the ``ready`` event that opens every stream."""
        event = self.next_event(timeout)
        assert event.type == "ready", event
        return event.json()

    def read_to_end(self, timeout: float = 10.0) -> bool:
        """Read until the server closes; :returns: whether the chunked terminator came first."""
        deadline = time.monotonic() + timeout
        while not self.closed and not self.decoder.finished:
            self._feed(self._recv(deadline))
        return self.decoder.finished

    def close(self) -> None:
        """Drop the connection."""
        self.sock.close()

    def __enter__(self) -> BlockingStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
