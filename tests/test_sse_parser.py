"""Tests for the test-side SSE tooling in ``tests/support/sse.py``.

The parser and decoder are the oracle every stream test relies on, so they
are checked here against the WHATWG rules and RFC 9112 chunking, without a
product server.  The client is checked against tiny servers started in the
tests themselves: a scripted asyncio server whose every byte the test
chooses, and a minimal Tornado handler for Tornado's own framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from tornado.httputil import HTTPHeaders, parse_request_start_line

from tests.support.sse import (
    ChunkedDecoder,
    Event,
    SSEClient,
    SSEParser,
    StreamEnded,
    http_json,
)

# pytest-timeout's positional form; pytest-tornasync ignores it (see
# STACK-NOTES: the seconds= form aborts the run).
pytestmark = pytest.mark.timeout(30)


def parse_all(*pieces: str) -> list[Event]:
    """Feed ``pieces`` to a fresh parser and return every event."""
    parser = SSEParser()
    return [event for piece in pieces for event in parser.feed(piece)]


def chunk(payload: bytes) -> bytes:
    """Frame ``payload`` as one chunk."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def chunked(*payloads: bytes) -> bytes:
    """Frame ``payloads`` as chunks, followed by the terminator."""
    return b"".join(chunk(p) for p in payloads if p) + b"0\r\n\r\n"


# ---------------------------------------------------------------------------
# SSEParser: line endings
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_each_line_ending_ends_lines(eol):
    events = parse_all(f"event: a{eol}data: 1{eol}{eol}data: 2{eol}{eol}")
    assert [(e.type, e.data) for e in events] == [("a", "1"), ("message", "2")]


def test_mixed_line_endings_in_one_stream():
    events = parse_all("data: a\r\ndata: b\rdata: c\n\r\n")
    assert [e.data for e in events] == ["a\nb\nc"]


def test_crlf_split_across_feeds_is_one_line_ending():
    # Were the LF taken as a second line ending, it would be a blank line
    # and dispatch "a" and "b" as two events.
    assert [e.data for e in parse_all("data: a\r", "\ndata: b\n\n")] == ["a\nb"]


def test_cr_at_end_of_feed_ends_the_line_without_waiting():
    parser = SSEParser()
    parser.feed("data: a\n")
    events = parser.feed("\r")
    assert [e.data for e in events] == ["a"]


def test_lone_cr_then_cr_in_next_feed_is_a_blank_line():
    assert [e.data for e in parse_all("data: a\r", "\r")] == ["a"]


def test_lf_after_split_crlf_is_swallowed_only_once():
    parser = SSEParser()
    parser.feed("data: a\r")
    assert parser.feed("\n") == []
    assert [e.data for e in parser.feed("\n")] == ["a"]


def test_every_split_point_gives_the_same_events():
    stream = (
        "\ufeff: hi\r\nid: 7\revent: x\ndata: a\r\ndata:b\r\r"
        "data: é€\n\nretry: 5\r\n\r\n"
    )
    expected = parse_all(stream)
    assert len(expected) == 2
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            assert parse_all(stream[:i], stream[i:j], stream[j:]) == expected, (i, j)


def test_one_character_at_a_time_gives_the_same_events():
    stream = "data: a\r\n\r\nid: 1\rdata: b\r\rdata: c\n\n"
    assert parse_all(*stream) == parse_all(stream)


# ---------------------------------------------------------------------------
# SSEParser: fields and dispatch
# ---------------------------------------------------------------------------


def test_multiline_data_is_joined_with_lf():
    assert parse_all("data: one\ndata: two\ndata: three\n\n")[0].data == "one\ntwo\nthree"


def test_type_defaults_to_message():
    assert parse_all("data: x\n\n")[0].type == "message"


def test_event_field_sets_the_type():
    assert parse_all("event: notification-read\ndata: {}\n\n")[0].type == "notification-read"


def test_event_type_resets_after_dispatch():
    events = parse_all("event: a\ndata: 1\n\ndata: 2\n\n")
    assert [e.type for e in events] == ["a", "message"]


def test_empty_event_field_means_message():
    assert parse_all("event:\ndata: x\n\n")[0].type == "message"


def test_block_without_data_is_not_dispatched():
    assert parse_all("event: ready\nid: 3\n\n") == []


def test_block_without_data_resets_the_event_type():
    events = parse_all("event: lost\n\ndata: x\n\n")
    assert [(e.type, e.data) for e in events] == [("message", "x")]


def test_empty_data_field_dispatches_empty_data():
    assert [e.data for e in parse_all("data:\n\n")] == [""]


def test_two_empty_data_fields_give_one_lf():
    assert parse_all("data\ndata\n\n")[0].data == "\n"


def test_unterminated_block_is_not_dispatched():
    assert parse_all("data: half") == []
    assert parse_all("data: half\n") == []


def test_id_sets_event_id_and_last_event_id():
    event = parse_all("id: 41\ndata: x\n\n")[0]
    assert (event.id, event.last_event_id) == ("41", "41")


def test_last_event_id_persists_across_events():
    parser = SSEParser()
    events = parser.feed("id: 5\ndata: a\n\ndata: b\n\n")
    assert [(e.id, e.last_event_id) for e in events] == [("5", "5"), (None, "5")]
    assert parser.last_event_id == "5"


def test_last_event_id_is_empty_before_any_id():
    parser = SSEParser()
    assert parser.feed("data: x\n\n")[0].last_event_id == ""
    assert parser.last_event_id == ""


def test_id_containing_nul_is_ignored():
    parser = SSEParser()
    events = parser.feed("id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert [(e.id, e.last_event_id) for e in events] == [("1", "1"), (None, "1")]
    assert parser.last_event_id == "1"


def test_empty_id_resets_last_event_id():
    events = parse_all("id: 9\ndata: a\n\nid\ndata: b\n\n")
    assert [(e.id, e.last_event_id) for e in events] == [("9", "9"), ("", "")]


def test_id_in_block_without_data_still_updates_last_event_id():
    parser = SSEParser()
    assert parser.feed("id: 12\n\n") == []
    assert parser.last_event_id == "12"
    assert parser.feed("data: x\n\n")[0].last_event_id == "12"


def test_last_event_id_commits_only_at_dispatch():
    # A reconnect after a cut-off block resumes from the last complete one.
    parser = SSEParser()
    parser.feed("id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert parser.last_event_id == "1"


def test_retry_with_digits_sets_retry():
    parser = SSEParser()
    parser.feed("retry: 2500\n\n")
    assert parser.retry == 2500


@pytest.mark.parametrize("value", ["", "10s", "-1", "1.5", " 5", "\u0661\u0662"])
def test_retry_that_is_not_only_ascii_digits_is_ignored(value):
    parser = SSEParser()
    parser.feed(f"retry: 100\nretry: {value}\n\n")
    assert parser.retry == 100


def test_retry_alone_dispatches_nothing():
    assert parse_all("retry: 3000\n\n") == []


def test_unknown_field_is_ignored():
    assert [e.data for e in parse_all("foo: bar\ndata: x\nbar\n\n")] == ["x"]


def test_field_names_are_case_sensitive():
    assert parse_all("Data: x\nEVENT: y\n\n") == []


def test_field_without_colon_has_an_empty_value():
    event = parse_all("event\ndata\n\n")[0]
    assert (event.type, event.data) == ("message", "")


def test_only_one_leading_space_is_stripped_from_a_value():
    assert parse_all("data:  two\n\n")[0].data == " two"


def test_value_without_leading_space_is_kept_whole():
    assert parse_all("data:x\n\n")[0].data == "x"


def test_value_splits_at_the_first_colon_only():
    assert parse_all("data: a: b:c\n\n")[0].data == "a: b:c"


def test_trailing_spaces_in_a_value_are_kept():
    assert parse_all("data: x  \n\n")[0].data == "x  "


# ---------------------------------------------------------------------------
# SSEParser: comments and BOM
# ---------------------------------------------------------------------------


def test_comment_is_recorded_without_its_leading_space():
    parser = SSEParser()
    parser.feed(": connected\n\n:ping\n:  two spaces\n:\n")
    assert parser.comments == ["connected", "ping", " two spaces", ""]


def test_comment_dispatches_nothing():
    assert parse_all(": ping\n\n") == []


def test_comment_inside_a_block_does_not_break_it():
    assert parse_all("data: a\n: ping\ndata: b\n\n")[0].data == "a\nb"


def test_comment_callback_sees_each_comment():
    seen: list[str] = []
    SSEParser(on_comment=seen.append).feed(": a\n: b\n")
    assert seen == ["a", "b"]


def test_leading_bom_is_stripped():
    assert [e.data for e in parse_all("\ufeffdata: x\n\n")] == ["x"]


def test_leading_bom_in_a_feed_of_its_own_is_stripped():
    assert [e.data for e in parse_all("", "\ufeff", "data: x\n\n")] == ["x"]


def test_only_one_leading_bom_is_stripped():
    # The second BOM becomes part of the field name, "\ufeffdata".
    assert parse_all("\ufeff\ufeffdata: x\n\n") == []


def test_bom_after_the_start_is_not_stripped():
    assert [e.data for e in parse_all("data: a\n\n", "\ufeffdata: b\n\n")] == ["a"]


# ---------------------------------------------------------------------------
# SSEParser: API details
# ---------------------------------------------------------------------------


def test_event_json_parses_data():
    assert parse_all('data: {"unreadCount": 3}\n\n')[0].json() == {"unreadCount": 3}


def test_empty_feed_changes_nothing():
    parser = SSEParser()
    assert parser.feed("") == []
    assert [e.data for e in parser.feed("\ufeffdata: x\n\n")] == ["x"]


def test_feed_refuses_bytes():
    with pytest.raises(TypeError):
        SSEParser().feed(b"data: x\n\n")


# ---------------------------------------------------------------------------
# ChunkedDecoder
# ---------------------------------------------------------------------------

CHUNKED_SAMPLE = (
    b"5\r\nhello\r\n"
    b"1;name=value\r\n \r\n"
    b"A \r\n0123456789\r\n"
    b"3\r\n\r\n\r\r\n"
    b"0\r\n\r\n"
)
CHUNKED_PAYLOAD = b"hello 0123456789\r\n\r"


def test_chunked_decodes_a_whole_body():
    decoder = ChunkedDecoder()
    assert decoder.feed(CHUNKED_SAMPLE) == CHUNKED_PAYLOAD
    assert decoder.finished


def test_chunked_decodes_across_every_split_point():
    for i in range(len(CHUNKED_SAMPLE) + 1):
        for j in range(i, len(CHUNKED_SAMPLE) + 1):
            decoder = ChunkedDecoder()
            out = b"".join(
                decoder.feed(p) for p in (CHUNKED_SAMPLE[:i], CHUNKED_SAMPLE[i:j], CHUNKED_SAMPLE[j:])
            )
            assert (out, decoder.finished) == (CHUNKED_PAYLOAD, True), (i, j)


def test_chunked_decodes_one_byte_at_a_time():
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(CHUNKED_SAMPLE[i : i + 1]) for i in range(len(CHUNKED_SAMPLE)))
    assert out == CHUNKED_PAYLOAD


def test_chunked_payload_is_released_before_the_chunk_ends():
    # A stream client must see data as it arrives, not a chunk at a time.
    assert ChunkedDecoder().feed(b"a\r\nhello") == b"hello"


def test_chunked_is_not_finished_before_the_final_crlf():
    decoder = ChunkedDecoder()
    decoder.feed(b"3\r\nabc\r\n0\r\n\r")
    assert not decoder.finished
    decoder.feed(b"\n")
    assert decoder.finished


def test_chunked_is_not_finished_after_a_nonzero_chunk():
    decoder = ChunkedDecoder()
    decoder.feed(b"3\r\nabc\r\n")
    assert not decoder.finished


def test_chunked_random_splits_of_a_long_body():
    rng = random.Random(20261128)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(40)]
    wire = chunked(*payloads)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(wire)), 20))
        decoder = ChunkedDecoder()
        out = b"".join(decoder.feed(wire[a:b]) for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True))
        assert (out, decoder.finished) == (b"".join(payloads), True)


def test_chunked_accepts_uppercase_hex_sizes():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"1A\r\n" + b"x" * 26 + b"\r\n") == b"x" * 26


def test_chunked_ignores_trailer_fields():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"1\r\nx\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n") == b"x"
    assert decoder.finished


def test_chunked_keeps_bytes_after_the_end_as_unused_data():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"0\r\n\r\nHTTP/1.1") == b""
    decoder.feed(b" 200")
    assert decoder.unused_data == b"HTTP/1.1 200"


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"zz\r\n", id="not-hex"),
        pytest.param(b"0x5\r\nhello\r\n", id="0x-prefix"),
        pytest.param(b"+5\r\nhello\r\n", id="plus-sign"),
        pytest.param(b"1_0\r\n", id="underscore"),
        pytest.param(b"\r\n", id="empty-size"),
        pytest.param(b" 5\r\nhello\r\n", id="leading-space"),
        pytest.param(b"5\nhello\r\n", id="bare-lf-after-size"),
        pytest.param(b"3\r\nabcX", id="data-overruns-size"),
        pytest.param(b"3\r\nabc\rX", id="cr-without-lf-after-data"),
        pytest.param(b"0\r\nno-colon\r\n", id="malformed-trailer"),
        pytest.param(b"1" * 5000, id="endless-size-line"),
    ],
)
def test_chunked_refuses_malformed_framing(wire):
    with pytest.raises(ValueError):
        ChunkedDecoder().feed(wire)


# ---------------------------------------------------------------------------
# SSEClient and http_json against servers started here
# ---------------------------------------------------------------------------


class ScriptedServer:
    """A one-connection HTTP server whose response bytes the test writes.

    The test awaits `request_head`, then `send`s exactly the bytes it wants
    (so chunk and write boundaries fall where it chooses) and `close`s.
    """

    def __init__(self) -> None:
        self.port = 0
        self.request_head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.client_gone = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        await self._server.wait_closed()
        if self._writer is not None:
            self._writer.transport.abort()
            # Let the handler task finish, so no task outlives the loop.
            await self.client_gone.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        try:
            self.request_head.set_result(await reader.readuntil(b"\r\n\r\n"))
            # Returns at EOF: the client went away (or we closed).
            await reader.read()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.client_gone.set()

    async def send(self, *pieces: bytes) -> None:
        """Write each piece with its own write and drain."""
        for piece in pieces:
            self._writer.write(piece)
            await self._writer.drain()

    def close(self) -> None:
        """Close the connection without any terminator."""
        self._writer.close()


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


async def test_client_reads_events_split_across_awkward_boundaries(io_loop):
    euro = "€".encode()
    part1 = ': connected\n\nevent: ready\nid: 1\ndata: {"connectionId": "c1"}\n\n'
    part1 += 'id: 2\ndata: {"message": "héllo '
    part2 = '"}\r\n\r\n: ping\n\ndata: first\r'
    chunk1 = part1.encode() + euro[:2]
    chunk2 = euro[2:] + part2.encode()
    chunk3 = b"\ndata: second\n\n"
    assert len(chunk2) >= 16  # so that its size line has two digits to cut
    size2 = b"%x" % len(chunk2)
    # Each write ends at an awkward place: inside "€", inside a size line,
    # inside a chunk's CRLF, between the CR and LF of an SSE line ending,
    # inside the terminator.  The test awaits what each write completes
    # before sending the next, so every write is a read of its own.
    writes = [
        STREAM_HEAD + chunk(chunk1) + size2[:1],
        size2[1:] + b"\r\n" + chunk2 + b"\r",
        b"\n" + chunk(chunk3) + b"0\r",
        b"\n\r\n",
    ]
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(
            SSEClient.connect("127.0.0.1", server.port, "/s?x=1", headers={"Last-Event-ID": "0"})
        )
        head = await server.request_head
        await server.send(writes[0])
        async with await connecting as client:
            ready = await client.next_event()
            await server.send(writes[1])
            message = await client.next_event()
            assert await client.next_comment() == "connected"
            assert await client.next_comment() == "ping"
            await server.send(writes[2])
            joined = await client.next_event()
            await server.send(writes[3])
            assert await client.wait_closed() is True

    assert head.startswith(b"GET /s?x=1 HTTP/1.1\r\n")
    request = HTTPHeaders.parse(head.decode("latin-1").partition("\r\n")[2])
    assert request["Accept"] == "text/event-stream"
    assert request["Last-Event-ID"] == "0"
    assert request["Host"] == f"127.0.0.1:{server.port}"
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = [ready, message, joined]
    assert [(e.type, e.id, e.last_event_id, e.data) for e in events] == [
        ("ready", "1", "1", '{"connectionId": "c1"}'),
        ("message", "2", "2", '{"message": "héllo €"}'),
        ("message", None, "2", "first\nsecond"),
    ]
    assert client.all_events == events


async def test_client_queues_comments_separately(io_loop):
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(STREAM_HEAD + chunk(b": connected\n\ndata: x\n\n: ping\n\n"))
        async with await connecting as client:
            assert await client.next_comment() == "connected"
            assert await client.next_comment() == "ping"
            assert (await client.next_event()).data == "x"


async def test_client_dispatches_on_a_cr_that_ends_a_read(io_loop):
    # The blank line is a lone CR at the very end of the payload sent: a
    # client waiting to see whether LF follows would never dispatch.
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(STREAM_HEAD + chunk(b"data: x\n\r"))
        async with await connecting as client:
            assert (await client.next_event()).data == "x"


async def test_client_reports_a_close_without_terminator_as_unclean(io_loop):
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(STREAM_HEAD + chunk(b"data: x\n\n"))
        async with await connecting as client:
            assert (await client.next_event()).data == "x"
            server.close()
            assert await client.wait_closed() is False
            with pytest.raises(StreamEnded):
                await client.next_event()


async def test_client_raises_stream_ended_after_queued_events_are_taken(io_loop):
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(STREAM_HEAD + chunked(b"data: a\n\ndata: b\n\n"))
        async with await connecting as client:
            await client.wait_closed()
            assert [e.data for e in await client.events(2)] == ["a", "b"]
            with pytest.raises(StreamEnded):
                await client.next_event()


async def test_client_timeout_consumes_no_events(io_loop):
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(STREAM_HEAD + chunk(b"data: a\n\n"))
        async with await connecting as client:
            assert (await client.next_event()).data == "a"
            await server.send(chunk(b"data: b\n\n"))
            # Waiting for something that will not come is the point here.
            with pytest.raises(asyncio.TimeoutError):
                await client.events(2, timeout=0.2)
            assert (await client.next_event()).data == "b"


async def test_client_reads_until_eof_without_framing(io_loop):
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n", b"data: a\n\n")
        server.close()
        async with await connecting as client:
            assert (await client.next_event()).data == "a"
            assert await client.wait_closed() is False


async def test_client_reports_malformed_chunking(io_loop):
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(STREAM_HEAD + b"zz\r\n")
        async with await connecting as client:
            with pytest.raises(ValueError):
                await client.wait_closed()
            assert isinstance(client.error, ValueError)
            with pytest.raises(StreamEnded):
                await client.next_event()


async def test_client_close_drops_the_connection(io_loop):
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(STREAM_HEAD + chunk(b"data: a\n\n"))
        client = await connecting
        assert (await client.next_event()).data == "a"
        client.close()
        await server.client_gone.wait()
        assert client.ended and not client.ended_cleanly
        with pytest.raises(StreamEnded):
            await client.next_event()
        await client.aclose()


async def test_client_reads_an_error_body_by_content_length(io_loop):
    body = json.dumps({"error": {"code": "unauthorized", "message": "no"}}).encode()
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body),
            body[:7],
            body[7:],
        )
        client = await connecting
        await server.client_gone.wait()
    assert (client.status, client.reason) == (401, "Unauthorized")
    assert json.loads(client.body_bytes)["error"]["code"] == "unauthorized"
    assert client.ended
    with pytest.raises(StreamEnded):
        await client.next_event()


async def test_client_reads_a_chunked_error_body(io_loop):
    async with ScriptedServer() as server:
        connecting = asyncio.ensure_future(SSEClient.connect("127.0.0.1", server.port, "/"))
        await server.request_head
        await server.send(
            b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunked(b'{"error": ', b'{"code": "too_many"}}'),
        )
        client = await connecting
    assert client.status == 429
    assert json.loads(client.body_bytes) == {"error": {"code": "too_many"}}
    assert client.ended_cleanly


class _TornadoStream(tornado.web.RequestHandler):
    """Streams two events with Tornado's own chunking, then finishes."""

    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.write(": connected\n\n")
        await self.flush()
        self.write(f"id: 1\ndata: {self.request.headers.get('Last-Event-ID')}\n\n")
        await self.flush()
        self.write("data: bye\n\n")


class _TornadoEcho(tornado.web.RequestHandler):
    """Answers any method with what it received, as JSON."""

    def _echo(self) -> None:
        if self.request.method == "DELETE":
            self.set_status(204)
            return
        self.write(
            {
                "method": self.request.method,
                "contentType": self.request.headers.get("Content-Type"),
                "contentLength": self.request.headers.get("Content-Length"),
                "body": self.request.body.decode("utf-8"),
            }
        )

    get = post = patch = put = delete = _echo


@contextlib.asynccontextmanager
async def tornado_server():
    """Serve the two handlers above on a free loopback port."""
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(
        tornado.web.Application([("/stream", _TornadoStream), ("/echo", _TornadoEcho)])
    )
    server.add_socket(sock)
    try:
        yield port
    finally:
        server.stop()
        await server.close_all_connections()


async def test_client_sees_tornado_finish_as_a_clean_end(io_loop):
    async with (
        tornado_server() as port,
        await SSEClient.connect("127.0.0.1", port, "/stream", {"Last-Event-ID": "7"}) as client,
    ):
        assert await client.next_comment() == "connected"
        events = await client.events(2)
        assert await client.wait_closed() is True
    assert [(e.id, e.data) for e in events] == [("1", "7"), (None, "bye")]


async def test_http_json_sends_a_dict_as_json(io_loop):
    async with tornado_server() as port:
        status, headers, body, raw = await http_json("127.0.0.1", port, "POST", "/echo", {"a": 1})
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["contentType"] == "application/json"
    assert json.loads(body["body"]) == {"a": 1}
    assert json.loads(raw) == body


async def test_http_json_sends_bytes_as_they_are(io_loop):
    async with tornado_server() as port:
        _, _, body, _ = await http_json(
            "127.0.0.1", port, "PATCH", "/echo", b"not json", {"Content-Type": "text/plain"}
        )
    assert (body["method"], body["contentType"], body["body"]) == ("PATCH", "text/plain", "not json")


async def test_http_json_post_without_body_sends_zero_length(io_loop):
    async with tornado_server() as port:
        _, _, body, _ = await http_json("127.0.0.1", port, "POST", "/echo")
    assert (body["contentType"], body["contentLength"], body["body"]) == (None, "0", "")


async def test_http_json_gives_none_for_an_empty_body(io_loop):
    async with tornado_server() as port:
        status, _, body, raw = await http_json("127.0.0.1", port, "DELETE", "/echo")
    assert (status, body, raw) == (204, None, b"")


async def test_http_json_gives_none_for_a_body_that_is_not_json(io_loop):
    async with ScriptedServer() as server:
        request = asyncio.ensure_future(http_json("127.0.0.1", server.port, "GET", "/"))
        head = await server.request_head
        await server.send(b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\noops!")
        status, _, body, raw = await request
    assert parse_request_start_line(head.decode().partition("\r\n")[0]).method == "GET"
    assert (status, body, raw) == (500, None, b"oops!")
