"""Incremental parser for an HTTP/1.1 response that carries a Server-Sent Events body.

No I/O: :class:`SSEParser` is fed bytes as they arrive and reports the
status, each dispatched frame, each comment and the end of the body to a sink
(in this package, :class:`~bench.loadgen.clients.SSEStream`).
"""

# Parser states.
_HEAD, _SIZE, _DATA, _CRLF, _IDENTITY, _DONE = range(6)


class SSEParser:
    """Incremental parser for an HTTP/1.1 response carrying an SSE body.

    Handles the status line and headers, chunked transfer encoding (or a
    close-delimited body) and SSE frames with LF line endings.  Chunk
    boundaries need not line up with frames.  Results go to ``sink``:

    * ``sink.on_status(status)`` once the head is parsed;
    * ``sink.on_event(name, event_id, data, now_ns)`` for each dispatched
      frame (``name`` and ``event_id`` are ``bytes`` or ``None``, ``data`` the
      ``data:`` lines joined by LF);
    * ``sink.on_comment(line)`` for each ``:`` line;
    * ``sink.on_end()`` on the terminating zero-length chunk.

    :param sink: object with the callbacks above.
    """

    __slots__ = ("_sink", "_buf", "_state", "_left", "_lines", "_name", "_id",
                 "_data", "_now")

    def __init__(self, sink):
        self._sink = sink
        self._buf = bytearray()
        self._state = _HEAD
        self._left = 0
        self._lines = bytearray()
        self._name = None
        self._id = None
        self._data = None
        self._now = 0

    def feed(self, data, now_ns):
        """Consume bytes received at ``now_ns`` and emit whatever completes.

        :param bytes data: bytes as read from the socket.
        :param int now_ns: ``time.monotonic_ns()`` at receipt, passed on to
            ``on_event``.
        """
        self._now = now_ns
        if self._state == _IDENTITY:
            self._body(data)
            return
        if self._state == _DONE:
            return
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        state = self._state
        while pos < end:
            if state == _DATA:
                take = min(end - pos, self._left)
                self._body(buf[pos:pos + take])
                pos += take
                self._left -= take
                if self._left:
                    break
                state = _CRLF
            elif state == _SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    state = _DONE
                    self._sink.on_end()
                    break
                self._left = size
                state = _DATA
            elif state == _CRLF:
                if end - pos < 2:
                    break
                pos += 2
                state = _SIZE
            else:
                state, pos = self._head(buf, pos)
                if state is None:
                    state = _HEAD
                    break
                if state == _IDENTITY:
                    self._body(buf[pos:])
                    pos = end
                elif state == _DONE:
                    break
        self._state = state
        del buf[:pos]

    def _head(self, buf, pos):
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return None, pos
        lines = bytes(buf[pos:end]).split(b"\r\n")
        status = int(lines[0].split(None, 2)[1])
        chunked = any(line.lower().startswith(b"transfer-encoding:")
                      and b"chunked" in line.lower() for line in lines[1:])
        self._sink.on_status(status)
        if status != 200:
            return _DONE, end + 4
        return (_SIZE if chunked else _IDENTITY), end + 4

    def _body(self, data):
        lines = self._lines
        lines += data
        start = 0
        while True:
            nl = lines.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(lines[start:nl])
            start = nl + 1
            if not line:
                if self._data is not None or self._name is not None or self._id is not None:
                    data_bytes = b"\n".join(self._data) if self._data is not None else b""
                    self._sink.on_event(self._name, self._id, data_bytes, self._now)
                    self._name = self._id = self._data = None
            elif line[0] == 0x3A:  # ":" starts a comment
                self._sink.on_comment(line)
            else:
                field, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if field == b"data":
                    if self._data is None:
                        self._data = [value]
                    else:
                        self._data.append(value)
                elif field == b"id":
                    self._id = value
                elif field == b"event":
                    self._name = value
        del lines[:start]
