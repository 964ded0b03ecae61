"""Hostile clients against the HTTP layer (core/transport/http1.py): answered, and at their share's cost.

Each test writes what a hostile client would, byte for byte, on a raw
socket: a request Tornado's request builder refuses, a body of tiny chunks,
a pipeline that is never read, a framing error in the same read as the
headers, more connections than the process serves.  Every refused request
gets the JSON error and one log line (never a traceback), on both doors
(the fast lanes and the handlers), and none of them holds more of the
server than its own share.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.checks import assert_error_body, count_notifications, wait_until
from tests.support.processes import ROOT, SECRET, clean_env, free_port, sqlite_url, wait_for, wait_healthy
from tests.support.rawhttp import NOTIFICATIONS, Raw, chunked, post_head

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_error_logged")]

BODY = json.dumps({"type": "info", "message": "hello"}).encode()


async def closed(raw: Raw) -> bool:
    """Whether the server closes the connection (having sent nothing more)."""
    try:
        return await raw.closed_by_server() == b""
    except ConnectionError:
        return True


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The log lines of requests the connection layer refused."""
    return [record for record in caplog.get_records("call")
            if record.name == "notify.access" and record.getMessage().startswith("400 ")]


# -- requests Tornado's request builder refuses ------------------------------------

TOO_MANY_FIELDS = "&".join(f"f{i}=1" for i in range(1001))

REFUSED_HEADS = {
    "no Host on HTTP/1.1": b"GET /health HTTP/1.1\r\n\r\n",
    "two Host headers": b"GET /health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    "a Host with a space": b"GET /health HTTP/1.1\r\nHost: bad host\r\n\r\n",
    "a Host with a slash": b"GET /health HTTP/1.1\r\nHost: evil.example/path\r\n\r\n",
    "1001 query fields": f"GET /api/v1/stats?{TOO_MANY_FIELDS} HTTP/1.1\r\nHost: test\r\n\r\n".encode(),
    # llhttp parses these; Tornado refuses them (tests/test_http_differential.py).
    "an HTTP/2.0 request line": b"GET /health HTTP/2.0\r\nHost: test\r\n\r\n",
    "no version (HTTP/0.9)": b"GET /health\r\nHost: test\r\n\r\n",
    "Transfer-Encoding: gzip, chunked": b"POST /api/v1/events HTTP/1.1\r\nHost: test\r\n"
                                        b"Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                                        b"2\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", REFUSED_HEADS.values(), ids=REFUSED_HEADS.keys())
async def test_a_head_tornado_refuses_gets_a_json_400_one_log_line_and_a_close(server, caplog, request_bytes):
    raw = await Raw.open(server)
    await raw.send(request_bytes)
    status, headers, body = await raw.response()
    assert_error_body(status, body, 400, "bad_request")
    assert headers["Connection"] == "close"
    assert await closed(raw)
    await raw.close()
    lines = refusals(caplog)
    assert len(lines) == 1 and lines[0].exc_info is None, [record.getMessage() for record in lines]
    assert server.app.deps.http_counters.requests_refused == 1


async def test_a_publish_in_the_fast_lane_shape_without_host_is_refused_and_stores_nothing(server):
    raw = await Raw.open(server)
    head = post_head(server, len(BODY)).replace(f"Host: {server.host}:{server.port}\r\n".encode(), b"")
    assert b"Host:" not in head
    await raw.send(head + BODY)
    status, _headers, body = await raw.response()
    assert_error_body(status, body, 400, "bad_request")
    assert await closed(raw)
    await raw.close()
    assert await count_notifications(server) == 0


async def test_a_stream_open_in_the_fast_lane_shape_without_host_is_refused(server):
    raw = await Raw.open(server)
    await raw.send(f"GET {NOTIFICATIONS}/stream HTTP/1.1\r\nAuthorization: Bearer {server.token('alice')}\r\n\r\n"
                   .encode())
    status, _, body = await raw.response()
    assert_error_body(status, body, 400, "bad_request")
    assert await closed(raw)
    await raw.close()
    assert server.manager.device_count() == 0


async def test_http10_without_host_is_served(server):
    raw = await Raw.open(server)
    await raw.send(b"GET /health HTTP/1.0\r\n\r\n")
    status, _, body = await raw.response()
    assert status == 200 and json.loads(body)["status"] == "ok"
    await raw.close()


async def test_an_ipv6_host_with_a_port_is_served(server):
    raw = await Raw.open(server)
    await raw.send(b"GET /health HTTP/1.1\r\nHost: [::1]:8888\r\n\r\n")
    assert (await raw.response())[0] == 200
    await raw.close()


# -- bodies ------------------------------------------------------------------------


async def test_a_body_of_ten_thousand_one_byte_chunks_does_not_stall_the_loop(server):
    # The whole body arrives before the handler takes any of it, so every
    # chunk waits in the connection: keeping their sum costs linear time.
    body = BODY + b" " * (10_000 - len(BODY))
    gaps: list[float] = []
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.ensure_future(tick())
    raw = await Raw.open(server)
    await raw.send(post_head(server, None, path=NOTIFICATIONS) + chunked(*(body[i:i + 1] for i in range(len(body)))))
    status, _, answer = await raw.response()
    ticker.cancel()
    await raw.close()
    assert status == 201, answer
    # Quadratic bookkeeping held the loop for 1-2 s here; linear takes
    # milliseconds.  The bound leaves room for a busy machine.
    assert max(gaps) < 0.5, max(gaps)


# -- pipelining ----------------------------------------------------------------------


async def open_slow_reader(server) -> Raw:
    """A connection whose kernel receive buffer is tiny (a client that reads slowly, if at all)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    return Raw(reader, writer)


async def test_pipelined_requests_wait_while_their_client_does_not_read(server, caplog):
    caplog.set_level(logging.INFO, logger="notify.access")
    path = "/api/v1/openapi.json"
    raw = await open_slow_reader(server)
    await raw.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode() * 300)
    counters = server.app.deps.http_counters
    await wait_until(lambda: counters.pipeline_waits >= 1)
    answered = sum(1 for record in caplog.get_records("call") if f"GET {path}" in record.getMessage())
    # About the socket buffers' worth plus one answer (plain Tornado builds
    # about 70 before it stops; without the pause all 300 were built).
    assert answered < 100, answered
    for _ in range(300):
        status, _, body = await raw.response()
        assert status == 200 and json.loads(body)["openapi"].startswith("3.")
    await raw.close()


@pytest.mark.slow
async def test_a_connection_holds_at_most_its_queue_of_parsed_requests(server):
    # 2,000 tiny pipelined requests in one write: only a few are parsed
    # ahead; the rest wait as bytes until their turn, and all are answered.
    raw = await Raw.open(server)
    await raw.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" * 2000)
    for _ in range(2000):
        assert (await raw.response())[0] == 200
    await raw.close()


def hold_health_answers(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """``(entered, release)``: ``GET /health`` is answered only once ``release`` is set; ``entered`` says one waits."""
    from handlers import routes

    entered, release = asyncio.Event(), asyncio.Event()
    route, _ = routes.match("/health")
    answer = route.methods["GET"]

    async def held(call):
        entered.set()
        await release.wait()
        return await answer(call)

    monkeypatch.setitem(route.methods, "GET", held)
    return entered, release


#: Half a request line: a connection the idle deadline ends.
IDLE_WITNESS = b"GET /hea"
#: A head announcing a body that never comes: a connection the body deadline ends.
BODY_WITNESS = (b"POST /api/v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10\r\n\r\n")


async def deadline_passed(server, witness_bytes: bytes = IDLE_WITNESS) -> None:
    """Return once the deadline sweep has closed a connection opened now that sent ``witness_bytes``.

    Every deadline of the same kind set before it opened has then passed a
    sweep too.
    """
    witness = await Raw.open(server)
    await witness.send(witness_bytes)
    assert await closed(witness)
    await witness.close()


async def test_a_half_request_behind_a_slow_answer_does_not_end_the_connection_before_it(make_server, monkeypatch):
    # Tornado reads the next request only once the answer is out: the
    # idle deadline of what follows starts then, not while it waits.
    server = await make_server(idle_timeout=0.3, body_timeout=0.3)
    entered, release = hold_health_answers(monkeypatch)
    raw = await Raw.open(server)
    await raw.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /hea")
    await entered.wait()
    await deadline_passed(server)
    release.set()
    assert (await raw.response())[0] == 200
    assert await closed(raw)  # the half request's own idle deadline, from the answer on
    await raw.close()


async def test_a_malformed_request_behind_a_slow_answer_is_refused_after_it(make_server, monkeypatch):
    server = await make_server(idle_timeout=0.3, body_timeout=0.3)
    entered, release = hold_health_answers(monkeypatch)
    raw = await Raw.open(server)
    await raw.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nBad Header\r\n\r\n")
    await entered.wait()
    await deadline_passed(server)
    release.set()
    assert (await raw.response())[0] == 200
    status, headers, body = await raw.response()
    assert_error_body(status, body, 400, "bad_request")
    assert headers["Connection"] == "close"
    assert await closed(raw)
    await raw.close()


@pytest.mark.slow
async def test_a_body_behind_a_slow_answer_gets_its_whole_body_deadline_after_it(make_server, monkeypatch):
    server = await make_server(idle_timeout=0.2, body_timeout=1.0)
    entered, release = hold_health_answers(monkeypatch)
    raw = await Raw.open(server)
    await raw.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" + post_head(server, len(BODY)) + BODY[:5])
    await entered.wait()
    await deadline_passed(server, BODY_WITNESS)  # the body deadline its head set has passed
    release.set()
    assert (await raw.response())[0] == 200
    await deadline_passed(server)  # a sweep after the answer: its body deadline counts from the answer
    await raw.send(BODY[5:])
    status, _, body = await raw.response()
    assert status == 201 and json.loads(body)["message"] == "hello"
    await raw.close()


# -- in-flight accounting ------------------------------------------------------------


async def test_a_framing_error_in_the_same_read_as_the_headers_leaves_nothing_in_flight(server):
    raw = await Raw.open(server)
    await raw.send(post_head(server, None, path=NOTIFICATIONS) + b"zz\r\nnot a chunk\r\n")
    status, headers, body = await raw.response()
    assert_error_body(status, body, 400, "bad_request")
    assert headers["Connection"] == "close"
    assert await closed(raw)
    await raw.close()
    await wait_until(lambda: server.app.deps.http_counters.in_flight == 0)


async def test_garbage_after_a_fast_lane_publish_is_refused_after_its_answer_and_nothing_stays_in_flight(server):
    raw = await Raw.open(server)
    await raw.send(post_head(server, len(BODY)) + BODY + b"\x16\x03\x01 not http\r\n\r\n")
    assert (await raw.response())[0] == 201
    status, _, body = await raw.response()
    assert_error_body(status, body, 400, "bad_request")
    assert await closed(raw)
    await raw.close()
    await wait_until(lambda: server.app.deps.http_counters.in_flight == 0)


@pytest.mark.slow
def test_sigterm_with_no_open_stream_exits_at_once_after_a_framing_error(tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "server.py", "--port", str(port), "--jwt-secret", SECRET,
             "--db-url", sqlite_url(tmp_path)], cwd=ROOT, env=clean_env(), stdout=log, stderr=log)
    try:
        wait_healthy(process, "127.0.0.1", port, log_path)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: application/json\r\n\r\nzz\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The grace for requests in flight is 8 s: nothing may be waited for.
    assert elapsed < 2.0, (elapsed, log_path.read_text())


# -- connection floods -------------------------------------------------------------


async def test_past_max_connections_a_new_connection_gets_a_quick_503(make_server):
    server = await make_server(max_connections=5)
    held = [await Raw.open(server) for _ in range(5)]
    for raw in held:  # each is accepted and served
        await raw.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await raw.response())[0] == 200
    extra = await Raw.open(server)
    status, headers, body = await extra.response()
    assert_error_body(status, body, 503, "too_many_connections")
    assert headers["Retry-After"] == "1" and headers["Connection"] == "close"
    assert await closed(extra)
    await extra.close()
    assert server.app.deps.http_counters.connections_refused == 1
    await held.pop().close()
    # The server notices the close on its own time: poll with new
    # connections until one is served (bounded).
    for _ in range(200):
        fresh = await Raw.open(server)
        await fresh.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        status = (await fresh.response())[0]
        await fresh.close()
        if status == 200:
            break
    assert status == 200
    for raw in held:
        await raw.close()


async def test_open_streams_count_towards_max_connections(make_server):
    server = await make_server(max_connections=2)
    first = await server.live_stream("alice")
    second = await server.live_stream("bob")
    extra = await Raw.open(server)
    status, _, body = await extra.response()
    assert_error_body(status, body, 503, "too_many_connections")
    await extra.close()
    first.close()
    second.close()


@pytest.mark.slow
def test_out_of_descriptors_pauses_accepting_with_one_log_line_and_little_cpu(tmp_path):
    limit = 200
    port = free_port()
    log_path = tmp_path / "server.log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "server.py", "--port", str(port), "--jwt-secret", SECRET,
             "--db-url", sqlite_url(tmp_path), "--max-connections", "1000"],
            cwd=ROOT, env=clean_env(), stdout=log, stderr=log, preexec_fn=low_limit)
    held: list[socket.socket] = []
    try:
        wait_healthy(process, "127.0.0.1", port, log_path)
        for _ in range(300):  # more than the process has descriptors for
            held.append(socket.create_connection(("127.0.0.1", port)))
        wait_for(lambda: "out of descriptors" in log_path.read_text(), 10, lambda: f"the line in {log_path.read_text()}")
        size_before, cpu_before = log_path.stat().st_size, cpu_seconds(process.pid)
        time.sleep(3.0)  # the window the figures are measured over
        cpu = cpu_seconds(process.pid) - cpu_before
        grown = log_path.stat().st_size - size_before
        # Retrying accept() at once spun the loop (60% of a core) and wrote
        # a traceback per try (26 MB in 5 s).
        assert cpu < 0.3, cpu
        assert grown < 1024, log_path.read_text()[-2000:]
        assert "Traceback" not in log_path.read_text()
        for sock in held:
            sock.close()
        held.clear()
        wait_healthy(process, "127.0.0.1", port, log_path)
    finally:
        for sock in held:
            sock.close()
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
