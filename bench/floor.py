#!/usr/bin/env python3
"""Floor baseline: the smallest raw-asyncio HTTP server doing the product's
per-user SSE fan-out.

It answers the routes the benchmark drives, with the same wire format as
the product (see ``shared/CONTRACT.md``), but without auth, storage,
validation or replay (so ``replay-storm`` is not run against it).  Its figures are the lower bound the real server is
compared with: what Python and the kernel cost for one stream or one publish
when nothing else runs.

Routes:

* ``GET /api/v1/users/{u}/notifications/stream`` -> 200 chunked
  ``text/event-stream``: ``: connected`` then ``event: ready`` with
  ``{"connectionId", "userId", "instanceId"}``.
* ``POST /api/v1/users/{u}/notifications`` -> 201 with the notification JSON;
  one ``id:``/``data:`` frame, encoded and chunk-framed once, is written to
  every stream of that user.
* ``POST /api/v1/events`` ``{"event", "userIds", "data"}`` -> 202
  ``{"published": n}``; for each listed user one ``event:``/``id:``/``data:``
  frame (the cursor differs per user, as in the product, so the frame is
  encoded once per user and shared by that user's devices; ``data`` is
  serialised once per request).
* ``GET /api/v1/stats`` -> 200 ``{"activeUsers", "totalDevices"}``.
* ``GET /health`` -> 200 ``{"status": "ok"}``.

Run: ``python bench/floor.py --port 8888 [--keepalive-interval 30]``.
"""

import argparse
import asyncio
import datetime
import itertools
import json
import signal
import socket
import urllib.parse
import uuid

_STREAM_PREFIX = "/api/v1/users/"
_STREAM_SUFFIX = "/notifications/stream"
_NOTIFY_SUFFIX = "/notifications"
_EVENTS_PATH = "/api/v1/events"
# Bodies are tiny in the benchmark; the cap only keeps a bad client from
# making the floor buffer without limit.
_MAX_BODY = 64 * 1024
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 404: "Not Found",
            413: "Payload Too Large"}
_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\n"
                b"Content-Type: text/event-stream; charset=utf-8\r\n"
                b"Cache-Control: no-cache\r\n"
                b"X-Accel-Buffering: no\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(payload):
    """Frame ``payload`` as one HTTP/1.1 chunk.

    :param bytes payload: non-empty body bytes.
    :rtype: bytes
    """
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_CONNECTED = chunk(b": connected\n\n")
_PING = chunk(b": ping\n\n")
_TERMINATOR = b"0\r\n\r\n"


def _dumps(obj):
    # Compact separators: one line, and the same shape a browser would parse.
    return json.dumps(obj, separators=(",", ":")).encode()


class Hub:
    """Registry of open streams by user id, and the fan-out itself.

    :ivar dict users: user id -> set of stream transports.
    :ivar str instance_id: identifies this process in ``ready`` frames.
    """

    def __init__(self):
        self.users = {}
        self.instance_id = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._conn_ids = itertools.count(1)

    def open_stream(self, user_id, transport):
        """Register ``transport`` as a stream of ``user_id``.

        :returns: the bytes that start the stream (head, comment, ready frame).
        :rtype: bytes
        """
        self.users.setdefault(user_id, set()).add(transport)
        ready = _dumps({"connectionId": "%s-%d" % (self.instance_id, next(self._conn_ids)),
                        "userId": user_id, "instanceId": self.instance_id})
        return _STREAM_HEAD + _CONNECTED + chunk(b"event: ready\ndata: " + ready + b"\n\n")

    def close_stream(self, user_id, transport):
        """Forget ``transport``; drops the user once no stream is left."""
        devices = self.users.get(user_id)
        if devices is not None:
            devices.discard(transport)
            if not devices:
                del self.users[user_id]

    def publish(self, user_id, body):
        """Build one notification and write its frame to every stream of the user.

        :param str user_id: the recipient.
        :param dict body: the posted JSON object.
        :returns: the notification as sent.
        :rtype: dict
        """
        note_id = next(self._ids)
        note = {
            "notificationId": note_id,
            "userId": user_id,
            "type": body.get("type", "info"),
            "message": body.get("message", ""),
            "createdAt": datetime.datetime.now(datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "actionUrl": body.get("actionUrl"),
            "sourceType": body.get("sourceType"),
            "readAt": None,
            "data": body.get("data") or {},
        }
        # Encoded and chunk-framed once: every device gets the same bytes object.
        frame = chunk(b"id: %d\ndata: %s\n\n" % (note_id, _dumps(note)))
        for transport in self.users.get(user_id, ()):
            transport.write(frame)
        return note

    def publish_event(self, name, user_ids, data):
        """Write one named event to every stream of each user in ``user_ids``.

        :param bytes name: the event name.
        :param list user_ids: recipients.
        :param dict data: the event's data object.
        :returns: how many users it was published to.
        :rtype: int
        """
        payload = _dumps(data)
        users = self.users
        for user_id in user_ids:
            # One cursor per user, as the product stores one event per user.
            frame = chunk(b"event: %s\nid: %d\ndata: %s\n\n" % (name, next(self._ids), payload))
            for transport in users.get(user_id, ()):
                transport.write(frame)
        return len(user_ids)

    def stats(self):
        """:returns: ``{"activeUsers", "totalDevices"}`` of this process."""
        return {"activeUsers": len(self.users),
                "totalDevices": sum(len(devices) for devices in self.users.values())}

    def broadcast_raw(self, data):
        """Write pre-framed ``data`` to every open stream (pings, shutdown)."""
        for devices in self.users.values():
            for transport in devices:
                transport.write(data)


class HTTPConnection(asyncio.Protocol):
    """One client connection: keep-alive requests until it turns into a stream.

    :param Hub hub: shared registry.
    """

    def __init__(self, hub):
        self._hub = hub
        self._buf = bytearray()
        self._transport = None
        self._stream_user = None

    def connection_made(self, transport):
        """Set TCP_NODELAY, as every measured server variant does."""
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        """Unregister the stream, if this connection became one."""
        if self._stream_user is not None:
            self._hub.close_stream(self._stream_user, self._transport)

    def data_received(self, data):
        """Parse and answer every complete request in the buffer (pipelining works)."""
        if self._stream_user is not None:
            # An SSE client has nothing more to say; whatever it sends is dropped.
            return
        self._buf += data
        while self._stream_user is None and not self._transport.is_closing():
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._reply(400, {"error": {"code": "bad_request", "message": "bad request line"}},
                            close=True)
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= _MAX_BODY:
                self._reply(413, {"error": {"code": "payload_too_large",
                                            "message": "body too large"}}, close=True)
                return
            if len(self._buf) < end + 4 + length:
                return
            body = bytes(self._buf[end + 4:end + 4 + length])
            del self._buf[:end + 4 + length]
            close = (version != "HTTP/1.1"
                     or headers.get("connection", "").lower() == "close")
            self._route(method, target.split("?", 1)[0], body, close)

    def _json_object(self, body, close):
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            self._reply(400, {"error": {"code": "bad_json", "message": "body is not a JSON object"}},
                        close)
            return None
        return payload

    def _route(self, method, path, body, close):
        if method == "GET" and path == "/health":
            self._reply(200, {"status": "ok"}, close)
        elif method == "GET" and path == "/api/v1/stats":
            self._reply(200, self._hub.stats(), close)
        elif method == "POST" and path == _EVENTS_PATH:
            payload = self._json_object(body, close)
            if payload is None:
                return
            name, user_ids = payload.get("event"), payload.get("userIds")
            if not isinstance(name, str) or not name or "\n" in name or not isinstance(user_ids, list):
                self._reply(400, {"error": {"code": "bad_event", "message": "event and userIds required"}},
                            close)
                return
            published = self._hub.publish_event(name.encode(), user_ids, payload.get("data") or {})
            self._reply(202, {"published": published}, close)
        elif (method == "GET" and path.startswith(_STREAM_PREFIX)
              and path.endswith(_STREAM_SUFFIX)):
            user = urllib.parse.unquote(path[len(_STREAM_PREFIX):-len(_STREAM_SUFFIX)])
            self._stream_user = user
            self._buf.clear()
            self._transport.write(self._hub.open_stream(user, self._transport))
        elif (method == "POST" and path.startswith(_STREAM_PREFIX)
              and path.endswith(_NOTIFY_SUFFIX)):
            user = urllib.parse.unquote(path[len(_STREAM_PREFIX):-len(_NOTIFY_SUFFIX)])
            payload = self._json_object(body, close)
            if payload is None:
                return
            note = self._hub.publish(user, payload)
            self._reply(201, note, close,
                        b"Location: /api/v1/users/%s/notifications/%d\r\n"
                        % (urllib.parse.quote(user).encode(), note["notificationId"]))
        else:
            self._reply(404, {"error": {"code": "not_found", "message": "no such route"}}, close)

    def _reply(self, status, obj, close, extra=b""):
        body = _dumps(obj)
        self._transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s"
            % (status, _REASONS[status].encode(), len(body), extra,
               b"Connection: close\r\n" if close else b"", body))
        if close:
            self._transport.close()


async def _keepalive(hub, interval):
    while True:
        await asyncio.sleep(interval)
        hub.broadcast_raw(_PING)


async def serve(address, port, keepalive_interval):
    """Serve until SIGTERM or SIGINT, then end every stream with the chunked terminator.

    :param str address: listen address.
    :param int port: listen port.
    :param float keepalive_interval: seconds between ``: ping`` comments.
    """
    loop = asyncio.get_running_loop()
    hub = Hub()
    # A deep accept queue so a burst of connects is not dropped as SYN
    # retries; the kernel still caps it at net.core.somaxconn.
    server = await loop.create_server(lambda: HTTPConnection(hub), address, port,
                                      backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pinger = asyncio.create_task(_keepalive(hub, keepalive_interval))
    print("floor listening on %s:%d instance %s" % (address, port, hub.instance_id), flush=True)
    await stop.wait()
    server.close()
    pinger.cancel()
    hub.broadcast_raw(_TERMINATOR)
    for devices in list(hub.users.values()):
        for transport in list(devices):
            transport.close()
    await server.wait_closed()


def main():
    """Parse flags (a subset of server.py's, the rest accepted and ignored) and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--keepalive-interval", type=float, default=30.0)
    # Accepted so that the bench runner can start floor.py and server.py
    # with the same command line.
    parser.add_argument("--db-url", help="ignored")
    parser.add_argument("--jwt-secret", help="ignored")
    parser.add_argument("--log-level", help="ignored")
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.port, args.keepalive_interval))


if __name__ == "__main__":
    main()
