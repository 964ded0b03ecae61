"""Server-Sent Events delivery: encoding, the open streams, replay, writers.

:mod:`~core.streams.sse` encodes events to bytes (pure);
:mod:`~core.streams.manager` is the SSE manager: user -> devices, live
delivery, keep-alive, expiry, stats; :mod:`~core.streams.replay` brings a
new or lagging stream from its cursor to the live edge;
:mod:`~core.streams.writer` writes a detached stream's frames to its socket.
It uses ``core.domain`` (history reads, errors) and ``core.transport`` (the
output buffer), nothing above.
"""
