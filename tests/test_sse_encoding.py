"""Unit tests of ``core.streams.sse``: encoding events, comments and chunks.

Two kinds of checks: the exact bytes of simple cases (field order, the
blank line, chunk framing), and a round trip through the test-side WHATWG
parser (``tests.support.sse.SSEParser``, written independently of the
product) for a table of hostile inputs: whatever user text goes in, a
browser sees exactly one event carrying it, and no forged or split event.
"""

from __future__ import annotations

import pytest

from core.streams.sse import PING, Frame, chunk, encode_comment, encode_event
from tests.support.sse import ChunkedDecoder, Event, SSEParser

pytestmark = pytest.mark.timeout(30)


def parse(encoded: bytes, piecewise: bool = False) -> tuple[SSEParser, list[Event]]:
    """Decode ``encoded`` as UTF-8 and parse it as a whole stream.

    :param piecewise: feed one character at a time (the worst split a
        network can produce).
    :returns: the parser (for comments, retry, last event id) and its events.
    """
    text = encoded.decode("utf-8")
    parser = SSEParser()
    pieces = list(text) if piecewise else [text]
    events = [event for piece in pieces for event in parser.feed(piece)]
    return parser, events


def only_event(encoded: bytes) -> Event:
    """The single event ``encoded`` holds (asserts there is exactly one)."""
    _, events = parse(encoded)
    assert len(events) == 1, events
    return events[0]


# -- exact encoding ----------------------------------------------------------------


def test_event_fields_in_order_ending_with_blank_line():
    assert encode_event("hello", event="ready", id=42, retry=2000) == (
        b"id: 42\nevent: ready\nretry: 2000\ndata: hello\n\n"
    )


def test_event_without_name_or_id_is_data_only():
    assert encode_event('{"a":1}') == b'data: {"a":1}\n\n'


def test_event_without_name_is_a_message_event():
    event = only_event(encode_event("x", id=3))
    assert (event.type, event.id) == ("message", "3")


def test_string_id_is_kept():
    assert only_event(encode_event("x", id="17")).last_event_id == "17"


def test_event_is_utf8():
    assert encode_event("héllo ☃ 🎉") == "data: héllo ☃ 🎉\n\n".encode()


def test_empty_data_still_has_a_data_line():
    encoded = encode_event("", event="token-expired")
    assert encoded == b"event: token-expired\ndata: \n\n"
    event = only_event(encoded)
    assert (event.type, event.data) == ("token-expired", "")


def test_retry_field_reaches_the_parser():
    parser, _ = parse(encode_event("{}", event="ready", retry=1500))
    assert parser.retry == 1500


@pytest.mark.parametrize("eol", ["\r\n", "\n", "\r"], ids=["crlf", "lf", "cr"])
def test_data_is_split_on_every_line_ending(eol):
    assert encode_event(f"one{eol}two{eol}three") == b"data: one\ndata: two\ndata: three\n\n"


def test_blank_lines_inside_data_become_empty_data_lines():
    assert encode_event("a\n\nb\r\n\r\n") == b"data: a\ndata: \ndata: b\ndata: \ndata: \n\n"


def test_nul_in_data_is_replaced():
    encoded = encode_event("a\x00b")
    assert b"\x00" not in encoded
    assert only_event(encoded).data == "a\ufffdb"


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\x00"], ids=["cr", "lf", "crlf", "nul"])
def test_id_and_event_lose_cr_lf_nul(bad):
    encoded = encode_event("x", event=f"na{bad}me", id=f"1{bad}2")
    assert encoded == b"id: 12\nevent: name\ndata: x\n\n"


# -- comments -------------------------------------------------------------------------


def test_comment_is_one_comment_line_and_blank_line():
    assert encode_comment("connected") == b": connected\n\n"


def test_multiline_comment_stays_comments():
    encoded = encode_comment("one\r\ntwo\rthree\ndata: forged\n\nevent: x")
    assert encoded == b": one\n: two\n: three\n: data: forged\n: \n: event: x\n\n"
    parser, events = parse(encoded)
    assert events == []
    assert parser.comments == ["one", "two", "three", "data: forged", "", "event: x"]


def test_comment_loses_nul():
    assert encode_comment("pi\x00ng") == b": ping\n\n"


def test_ping_frame_is_the_ping_comment():
    assert PING.raw == b": ping\n\n"


# -- chunk framing ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 15, 16, 255, 256, 4096])
def test_chunk_size_is_hex_and_data_is_framed_by_crlf(size):
    payload = b"x" * size
    assert chunk(payload) == b"%x\r\n" % size + payload + b"\r\n"


def test_chunks_decode_back_to_the_frames():
    frames = [encode_comment("connected"), encode_event("é\nß", event="ready", id=1), PING.raw]
    decoder = ChunkedDecoder()
    body = decoder.feed(b"".join(chunk(f) for f in frames) + b"0\r\n\r\n")
    assert body == b"".join(frames)
    assert decoder.finished


def test_chunk_size_counts_bytes_not_characters():
    payload = encode_event("☃")
    assert chunk(payload).startswith(b"%x\r\n" % len(payload))
    assert len(payload) > len(payload.decode("utf-8"))


def test_frame_chunked_is_built_once_and_reused():
    frame = Frame(encode_event("x", id=1))
    first = frame.chunked
    assert first == chunk(frame.raw)
    assert frame.chunked is first


# -- round trip through a browser's parser ------------------------------------------------

#: (data in, data a browser reassembles).  Line endings come back as LF,
#: NUL as U+FFFD; everything else comes back exactly.
NASTY_DATA = [
    ("", ""),
    (" ", " "),
    ("  leading spaces", "  leading spaces"),
    ("trailing space ", "trailing space "),
    ("\n", "\n"),
    ("\r", "\n"),
    ("\r\n", "\n"),
    ("\n\n", "\n\n"),
    ("\r\r", "\n\n"),
    ("\n\r", "\n\n"),
    ("\r\n\r\n", "\n\n"),
    ("line\n", "line\n"),
    ("\nline", "\nline"),
    ("a\r\nb\rc\nd", "a\nb\nc\nd"),
    ("hello\n\ndata: forged", "hello\n\ndata: forged"),
    ("x\r\n\r\nevent: evil\r\ndata: forged\r\n\r\n", "x\n\nevent: evil\ndata: forged\n\n"),
    ("\n\nid: 999\n\n", "\n\nid: 999\n\n"),
    ("retry: 1\n\n", "retry: 1\n\n"),
    (": not a comment", ": not a comment"),
    ("\n: still data", "\n: still data"),
    ("data:", "data:"),
    ("nul\x00inside", "nul\ufffdinside"),
    ("\x00", "\ufffd"),
    ("\x00\n\x00", "\ufffd\n\ufffd"),
    ("\ufeffbom first", "\ufeffbom first"),
    ("unicode ☃ 🎉 日本語 \u2028 \u2029 \x85", "unicode ☃ 🎉 日本語 \u2028 \u2029 \x85"),
    ("tab\tand\vvertical\fform", "tab\tand\vvertical\fform"),
    ('{"message": "a\\nb", "x": "\\r"}', '{"message": "a\\nb", "x": "\\r"}'),
    ("x" * 10_000, "x" * 10_000),
]


@pytest.mark.parametrize("data, expected", NASTY_DATA, ids=[repr(d)[:40] for d, _ in NASTY_DATA])
@pytest.mark.parametrize("piecewise", [False, True], ids=["whole", "char-by-char"])
def test_any_data_round_trips_as_exactly_one_event(data, expected, piecewise):
    _, events = parse(encode_event(data, event="update", id=7), piecewise=piecewise)
    assert len(events) == 1, events
    event = events[0]
    assert (event.type, event.data, event.id) == ("update", expected, "7")


#: Event names and ids as a hostile caller might pass them, and what a
#: browser sees: CR, LF and NUL are gone, nothing else changes.
NASTY_FIELDS = [
    ("plain", "plain"),
    ("name\n\ndata: forged", "namedata: forged"),
    ("name\r\nid: 99", "nameid: 99"),
    ("name\rretry: 1", "nameretry: 1"),
    ("na\x00me", "name"),
    ("\n", ""),
    (" spaced ", " spaced "),
]


@pytest.mark.parametrize("value, expected", NASTY_FIELDS, ids=[repr(v)[:30] for v, _ in NASTY_FIELDS])
def test_event_name_cannot_split_or_forge_events(value, expected):
    parser, events = parse(encode_event("payload", event=value, id=5))
    assert len(events) == 1, events
    assert (events[0].type, events[0].data) == (expected or "message", "payload")
    assert parser.last_event_id == "5"
    assert parser.retry is None


@pytest.mark.parametrize("value, expected", NASTY_FIELDS, ids=[repr(v)[:30] for v, _ in NASTY_FIELDS])
def test_event_id_cannot_split_or_forge_events(value, expected):
    parser, events = parse(encode_event("payload", event="update", id=value))
    assert len(events) == 1, events
    assert (events[0].type, events[0].data) == ("update", "payload")
    assert parser.last_event_id == expected
    assert parser.retry is None


def test_consecutive_events_stay_separate():
    stream = b"".join(encode_event(d, id=i) for i, (d, _) in enumerate(NASTY_DATA))
    _, events = parse(stream)
    assert [e.data for e in events] == [expected for _, expected in NASTY_DATA]
    assert [e.id for e in events] == [str(i) for i in range(len(NASTY_DATA))]
