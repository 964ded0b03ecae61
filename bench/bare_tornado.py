#!/usr/bin/env python3
"""Calibration: the smallest Tornado servers answering the benchmark's POST.

Not a product and not the floor: it measures what Tornado's own HTTP/1.1
machinery costs per request on this machine, so that the product's
per-request figures can be split into "Tornado" and "ours".  Two layers:

``--layer handler``
    a ``tornado.web.Application`` with one ``RequestHandler`` per route
    (``json.loads`` the body, ``finish`` a JSON answer): the cost every
    ordinary Tornado endpoint pays.
``--layer delegate``
    the same answers from a bare ``httputil.HTTPMessageDelegate`` behind
    ``HTTPServer`` (no Application, no RequestHandler): what is left when
    only Tornado's connection and parser remain.
``--layer lean``
    the same delegate behind the product's own connection layer
    (:mod:`core.transport.http1`: httptools, one reader callback, direct sends).
``--layer lean-handler``
    the ``handler`` application behind :mod:`core.transport.http1`.

No auth, storage, validation or fan-out.  Routes, as ``bench/floor.py``:
``POST /api/v1/users/{u}/notifications`` -> 201 JSON, ``GET /health``,
``GET /api/v1/stats`` (``activeUsers`` 0).

Run: ``python bench/bare_tornado.py --port 8888 --layer handler`` and drive
it with ``python -m bench.loadgen create``.
"""

import argparse
import asyncio
import datetime
import itertools
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web

_PREFIX = "/api/v1/users/"
_SUFFIX = "/notifications"
_ids = itertools.count(1)


def _note(user, payload):
    """The answer both layers give: a notification-shaped object."""
    return {
        "notificationId": next(_ids),
        "userId": user,
        "title": payload.get("title"),
        "message": payload.get("message"),
        "createdAt": datetime.datetime.now(datetime.UTC).isoformat(),
    }


class NotifyHandler(tornado.web.RequestHandler):
    """``POST /api/v1/users/{u}/notifications`` through a RequestHandler."""

    def post(self, user):
        """Parse the JSON body and answer 201."""
        self.set_status(201)
        self.finish(_note(user, json.loads(self.request.body)))


class HealthHandler(tornado.web.RequestHandler):
    """``GET /health``."""

    def get(self):
        """Answer ok."""
        self.finish({"status": "ok"})


class StatsHandler(tornado.web.RequestHandler):
    """``GET /api/v1/stats`` (the load generator polls it)."""

    def get(self):
        """Answer an empty hub."""
        self.finish({"activeUsers": 0, "totalDevices": 0})


class _Message(tornado.httputil.HTTPMessageDelegate):
    """One request on the delegate layer: collect the body, answer at the end."""

    def __init__(self, connection):
        self._connection = connection
        self._start = None
        self._chunks = []

    def headers_received(self, start_line, headers):
        """Remember the request line."""
        self._start = start_line

    def data_received(self, chunk):
        """Collect the body."""
        self._chunks.append(chunk)

    def finish(self):
        """Route and answer."""
        path = self._start.path.split("?", 1)[0]
        if self._start.method == "POST" and path.startswith(_PREFIX) and path.endswith(_SUFFIX):
            status, reason = 201, "Created"
            obj = _note(path[len(_PREFIX):-len(_SUFFIX)], json.loads(b"".join(self._chunks)))
        elif path == "/health":
            status, reason, obj = 200, "OK", {"status": "ok"}
        elif path == "/api/v1/stats":
            status, reason, obj = 200, "OK", {"activeUsers": 0, "totalDevices": 0}
        else:
            status, reason, obj = 404, "Not Found", {"error": {"code": "not_found"}}
        body = json.dumps(obj).encode()
        headers = tornado.httputil.HTTPHeaders({"Content-Type": "application/json",
                                                "Content-Length": str(len(body))})
        self._connection.write_headers(
            tornado.httputil.ResponseStartLine("HTTP/1.1", status, reason), headers, body)
        self._connection.finish()

    def on_connection_close(self):
        """Nothing to release."""


class _Router(tornado.httputil.HTTPServerConnectionDelegate):
    """Hands every request of a connection to a fresh :class:`_Message`."""

    def start_request(self, server_conn, request_conn):
        """One message delegate per request."""
        return _Message(request_conn)


async def serve(port, layer):
    """Serve on 127.0.0.1 until SIGTERM or SIGINT."""
    if layer in ("handler", "lean-handler"):
        target = tornado.web.Application([
            (r"/api/v1/users/([^/]+)/notifications", NotifyHandler),
            (r"/health", HealthHandler),
            (r"/api/v1/stats", StatsHandler),
        ])
    else:
        target = _Router()
    if layer.startswith("lean"):
        from core.transport.http1 import HTTP1Server

        server = HTTP1Server(target)
        server.add_sockets(tornado.netutil.bind_sockets(port, "127.0.0.1", backlog=4096))
    else:
        server = tornado.httpserver.HTTPServer(target)
        server.listen(port, "127.0.0.1", backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("bare tornado (%s) listening on 127.0.0.1:%d" % (layer, port), flush=True)
    await stop.wait()
    server.stop()


def main():
    """Parse flags (unknown product flags are accepted and ignored) and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--layer", choices=("handler", "delegate", "lean", "lean-handler"), default="handler")
    args, _ = parser.parse_known_args()
    asyncio.run(serve(args.port, args.layer))


if __name__ == "__main__":
    main()
