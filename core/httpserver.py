"""Tornado's HTTP server with its connection deadlines kept by one timer.

Tornado enforces ``idle_connection_timeout`` and ``body_timeout`` with a
``gen.with_timeout`` around every header and body read: a timer scheduled
and cancelled, a Future and its chaining per request.  Profiling the create
path showed that at 7-8% of a request's CPU.  Here the same two deadlines
are written into a dict as each request's phases begin, and one periodic
sweep closes the connections that passed theirs:

- waiting for a request (the next one on a kept-alive connection) and
  reading its header block: ``idle_timeout`` from the moment the server
  starts waiting, so a client that sends half a request line, or trickles
  its headers (slow loris), is cut off;
- reading the body: ``body_timeout`` from the end of the headers;
- once the request is read, no deadline: the response is the
  application's, and an event stream lasts as long as it likes.

A connection closed for its deadline gets no answer (there is no request to
answer yet, or only part of one), as with Tornado's own timeouts.
"""

from __future__ import annotations

from typing import Any

import tornado.httpserver
from tornado import httputil
from tornado.ioloop import IOLoop, PeriodicCallback


class _Phases(httputil.HTTPMessageDelegate):
    """Passes a request through, moving its connection's deadline along."""

    __slots__ = ("_server", "_conn", "_inner")

    def __init__(self, server: "GuardedHTTPServer", conn: Any, inner: httputil.HTTPMessageDelegate) -> None:
        self._server = server
        self._conn = conn
        self._inner = inner

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        """Headers are in: the body (if any) now has ``body_timeout``."""
        self._server._deadlines[self._conn] = IOLoop.current().time() + self._server.body_timeout
        return self._inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        """A piece of the body."""
        return self._inner.data_received(chunk)

    def finish(self) -> None:
        """The request is read: the response has no deadline."""
        self._server._deadlines.pop(self._conn, None)
        self._inner.finish()

    def on_connection_close(self) -> None:
        """The connection closed before the request was read."""
        self._server._deadlines.pop(self._conn, None)
        self._inner.on_connection_close()


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTPServer whose header and body deadlines cost a dict write each.

    :param idle_timeout: seconds to wait for a request and its headers.
    :param body_timeout: seconds to receive a request's body.
    Other keyword arguments go to Tornado's HTTPServer, except its own two
    timeouts, which this replaces.
    """

    def initialize(self, *args: Any, idle_timeout: float = 75.0, body_timeout: float = 30.0, **kwargs: Any) -> None:
        """Tornado's initialize, with the deadlines taken over."""
        super().initialize(*args, **kwargs)
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        # Tornado would wrap every header read in gen.with_timeout (it
        # defaults this to an hour when no idle timeout is given).
        self.conn_params.header_timeout = None
        self.conn_params.body_timeout = None
        self._deadlines: dict[Any, float] = {}
        period = max(0.05, min(1.0, idle_timeout / 4, body_timeout / 4))
        self._sweeper = PeriodicCallback(self._sweep, period * 1000)
        self._sweeper.start()

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """The server starts waiting for a request on ``server_conn``."""
        self._deadlines[server_conn] = IOLoop.current().time() + self.idle_timeout
        return _Phases(self, server_conn, super().start_request(server_conn, request_conn))

    def on_close(self, server_conn: object) -> None:
        """The connection's request loop ended (closed, or detached for a stream)."""
        self._deadlines.pop(server_conn, None)
        super().on_close(server_conn)

    def _sweep(self) -> None:
        now = IOLoop.current().time()
        late = [conn for conn, deadline in self._deadlines.items() if deadline <= now]
        for conn in late:
            del self._deadlines[conn]
            conn.stream.close()  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop listening and stop the sweep."""
        self._sweeper.stop()
        super().stop()
