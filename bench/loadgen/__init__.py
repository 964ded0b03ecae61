"""Raw-socket load generator for the SSE notification server.

One asyncio process (uvloop when installed), no HTTP client library: every
stream is an :class:`asyncio.Protocol` with an incremental chunked + SSE
parser, and requests go over keep-alive HTTP/1.1 connections.  Every
published item carries ``time.monotonic_ns()`` taken right before its
request is written, so latency is receipt minus that stamp, end to end.

Scenarios (one or more, run in the order given on the same streams), one
module each in :mod:`.scenarios`, whose docstrings say what each measures:

``conns``
    open ``--streams`` SSE streams and measure what they cost the server
    (every other stream scenario starts with this phase);
``peruser``
    notifications to random users at ``--rate``, open loop: latency;
``broadcast``
    rounds of one event to every user with streams: deliveries per second;
``create``
    notifications stored back to back, closed loop: stores per second and
    the server's loop lag;
``replay-storm``
    every client reconnects at once, events behind: time to catch up and
    a check of each client's sequence.

Only loopback targets are meant (``127.0.0.0/8``); every phase is bounded by a
duration or a timeout and every socket is closed at the end.

Example (from the repository root)::

    .venv/bin/python -m bench.loadgen peruser broadcast --streams 3000 \\
        --rate 1000 --duration 10 --jwt-secret S --server-pid 1234 --json out.json

Modules: :mod:`.cli` (command line, entry point), :mod:`.session` (the run:
shared state, opening streams, closing), :mod:`.scenarios` (one module per
scenario), :mod:`.clients` (SSE streams, API connections, publishing),
:mod:`.sse` (the response parser), :mod:`.stats` (counters, percentiles,
CPU and memory readings, the loop-lag histogram), :mod:`.report` (the table
and the verdict).
"""
