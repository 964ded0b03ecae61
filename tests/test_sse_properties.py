"""Property tests: no user text can forge, split or change a stream event.

Hypothesis generates the text (CR, LF, CRLF, NUL, U+2028, a BOM, ``data:``
and ``id:`` look-alikes, anything printable or not) and each property reads
the encoded bytes back with the test-side WHATWG parser
(``tests.support.sse.SSEParser``), which was written without the product's
encoder in view:

* ``core.streams.sse.encode_event`` gives exactly one event for any data, name and
  id, with the data back line for line and the name and id on one line;
* the notification event as the service builds it (``notification_json``,
  ``compact_json``, ``encode_event`` with the cursor) is exactly one
  ``message`` event with that cursor whose data is the notification's JSON;
  a named event likewise carries its name, its cursor and its data;
* a whole stream of such frames, split anywhere into network reads, parses
  into exactly those events;
* a lone surrogate (which the UTF-8 encoder would refuse) cannot reach the
  encoder: request bodies, user ids and token subjects keep it out.

One test drives a real server over sockets with a few generated messages,
live and replayed.  Example counts are bounded (about 200 for the pure
properties, 10 for the socket one) and there is no deadline: the machine is
shared and timing is not what is tested.
"""

from __future__ import annotations

import codecs
import json
import operator
import time
import types
import urllib.parse
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.domain.auth import TokenService
from core.domain.errors import AuthError, BadRequest, ValidationError
from core.domain.service import notification_json
from core.domain.validation import EVENT_NAME, USER_ID, check_user_id, compact_json, iso, parse_json_body
from core.streams.sse import PING, encode_comment, encode_event
from tests.support.sse import Event, SSEParser

pytestmark = pytest.mark.timeout(120)

PURE = settings(max_examples=200, deadline=None)
SOCKETS = settings(
    max_examples=10,
    deadline=None,
    # One server serves every example on purpose (each example opens its
    # own stream for its own user); starting one per example is the slow part.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Pieces that matter to an event-stream parser, mixed into arbitrary text.
NASTY = st.sampled_from(
    ["\r", "\n", "\r\n", "\n\n", "\r\r", "\x00", "\u2028", "\u2029", "\x85", "\ufeff", ":", " ",
     "data: ", "id: 999", "event: evil", "retry: 1", "\\n", '"', "\\", "\x1b", "\x7f", "\U0010ffff"]
)
#: Any text a client can send (no lone surrogates: see the last section).
nasty_text = st.lists(NASTY | st.text(max_size=6), max_size=24).map("".join)
#: JSON values as a request body can carry them.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | nasty_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(nasty_text, children, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(nasty_text, json_values, max_size=4)
#: Names ``POST /api/v1/events`` accepts (``EVENT_NAME``), built directly:
#: generating from the regex is several times slower.
_NAME_START = "abcdefghijklmnopqrstuvwxyz0123456789"
event_names = st.builds(operator.add, st.sampled_from(_NAME_START), st.text(_NAME_START + "._:-", max_size=63))
cursors = st.integers(min_value=1, max_value=10**18)


def parse(encoded: bytes) -> tuple[SSEParser, list[Event]]:
    """The events of ``encoded`` (a complete stream) and the parser after it."""
    parser = SSEParser()
    return parser, parser.feed(encoded.decode("utf-8"))


def without(text: str, characters: str) -> str:
    """``text`` with every one of ``characters`` removed."""
    return text.translate({ord(c): None for c in characters})


# -- core.streams.sse.encode_event ---------------------------------------------------------


@PURE
@given(data=nasty_text, event=st.none() | nasty_text, id=st.none() | cursors | nasty_text, retry=st.none() | st.integers(0, 10**6))
def test_any_event_encodes_to_exactly_one_event_with_its_data_name_and_id(data, event, id, retry):
    parser, events = parse(encode_event(data, event=event, id=id, retry=retry))
    assert len(events) == 1, events
    (got,) = events
    # Data comes back line for line: each CR, LF or CRLF is one line break
    # (the browser joins lines with LF), and NUL, which a parser may refuse,
    # is the replacement character.
    assert got.data == data.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")
    # The name and id stay one field each: they only lose CR, LF and NUL.
    name = without(event, "\r\n\x00") if event is not None else ""
    assert got.type == (name or "message")
    assert got.id == (without(str(id), "\r\n\x00") if id is not None else None)
    assert parser.retry == retry


@PURE
@given(text=nasty_text)
def test_a_comment_never_becomes_an_event_or_a_field(text):
    parser, events = parse(encode_comment(text))
    assert events == []
    assert parser.last_event_id == "" and parser.retry is None


# -- the events the service builds ----------------------------------------------


notification_rows = st.builds(
    types.SimpleNamespace,
    id=st.from_regex(r"ntf_[0-9a-f]{20}", fullmatch=True),
    user_id=st.from_regex(USER_ID, fullmatch=True),
    type=st.sampled_from(["info", "success", "warning", "error"]),
    message=nasty_text.filter(bool),
    created_at=st.integers(0, 2**42),
    action_url=st.none() | nasty_text,
    source_type=st.none() | st.from_regex(r"[A-Z0-9_]{1,64}", fullmatch=True),
    read_at=st.none() | st.integers(0, 2**42),
    # Stored as the compact JSON of the posted object, as the service does.
    data=st.none() | json_objects.map(compact_json),
)


@pytest.mark.slow
@PURE
@given(row=notification_rows, cursor=cursors)
def test_a_notification_event_is_exactly_its_json_with_its_cursor(row, cursor):
    notification = notification_json(row)
    _, events = parse(encode_event(compact_json(notification), id=cursor))
    assert events == [Event(type="message", data=events[0].data, last_event_id=str(cursor), id=str(cursor))]
    assert json.loads(events[0].data) == notification
    assert notification["message"] == row.message
    assert notification["createdAt"] == iso(row.created_at)


@pytest.mark.slow
@PURE
@given(name=event_names, data=json_objects, cursor=cursors)
def test_a_published_event_is_exactly_its_name_cursor_and_data(name, data, cursor):
    assert EVENT_NAME.match(name)
    _, events = parse(encode_event(compact_json(data), event=name, id=cursor))
    assert [(event.type, event.id) for event in events] == [(name, str(cursor))]
    assert json.loads(events[0].data) == data


@settings(PURE, max_examples=100)
@given(
    rows=st.lists(st.tuples(st.none() | event_names, st.dictionaries(nasty_text, nasty_text, max_size=3)), min_size=1, max_size=4),
    first=cursors,
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_a_stream_split_into_any_reads_parses_into_exactly_its_events(rows, first, cuts):
    """The frames of a stream, cut into network reads anywhere (inside a
    CRLF or a multi-byte character too), give exactly the events sent."""
    frames = [encode_comment("connected"), encode_event('{"connectionId":"c_1"}', event="ready", retry=2000)]
    expected = [("ready", None, {"connectionId": "c_1"})]
    for offset, (name, data) in enumerate(rows):
        frames += [encode_event(compact_json(data), event=name, id=first + offset), PING.raw]
        expected.append((name or "message", str(first + offset), data))
    stream = b"".join(frames)
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    pieces = [stream[start:end] for start, end in zip([0, *points], [*points, len(stream)], strict=True)]
    parser, decoder = SSEParser(), codecs.getincrementaldecoder("utf-8")()
    events = [event for piece in pieces for event in parser.feed(decoder.decode(piece))]
    assert [(event.type, event.id, json.loads(event.data)) for event in events] == expected
    assert parser.comments == ["connected"] + ["ping"] * len(rows)


# -- lone surrogates cannot reach the encoder ---------------------------------------

#: Text that may hold lone surrogates (U+D800..U+DFFF), which UTF-8 cannot encode.
surrogate_text = st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=12)


@PURE
@given(value=st.dictionaries(surrogate_text, surrogate_text | st.lists(surrogate_text, max_size=3), max_size=4))
def test_a_json_body_with_a_lone_surrogate_is_refused_before_it_reaches_a_stream(value):
    # As a client sends it: JSON escapes each surrogate as \udXXX.
    body = json.dumps({"data": value}).encode("ascii")
    try:
        parsed = parse_json_body(body)
    except BadRequest:
        return
    # Accepted only when every escape was half of a proper pair.
    encode_event(compact_json(parsed))


@PURE
@given(body=st.binary(max_size=64) | surrogate_text.map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_any_request_body_is_refused_or_encodable(body):
    try:
        parsed = parse_json_body(body)
    except (BadRequest, ValidationError):
        return
    encode_event(compact_json(parsed))


@PURE
@given(user_id=surrogate_text)
def test_a_user_id_that_passes_the_check_is_encodable(user_id):
    try:
        check_user_id(user_id)
    except ValidationError:
        return
    encode_event(compact_json({"userId": user_id}))


SECRET = "property-secret-" + "p" * 24


@PURE
@given(subject=surrogate_text)
def test_a_signed_token_is_refused_or_names_an_encodable_user(subject):
    token = jwt.encode({"sub": subject, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    try:
        principal = TokenService(SECRET).verify(token)
    except AuthError:
        return
    assert principal.user_id == subject
    encode_event(compact_json({"userId": principal.user_id}))


# -- over a real stream -------------------------------------------------------------


@SOCKETS
@given(message=nasty_text.filter(bool), text=nasty_text, name=event_names.filter(lambda name: name not in ("message", "ready", "reset")))
def test_nasty_text_reaches_a_real_stream_as_exactly_the_events_sent_live_and_replayed(
    io_loop, server, no_error_logged, message, text, name
):
    if name in ("token-expired", "notification-read", "notification-deleted"):
        name = "x." + name
    io_loop.run_sync(lambda: _round_trip(server, message, text, name), timeout=30)


_users = iter(range(10**9))


async def _round_trip(server: Any, message: str, text: str, name: str) -> None:
    """A notification and an event carrying ``message``/``text``, then a
    sentinel: live and then replayed, a device sees exactly those three."""
    user = f"prop-{next(_users)}"
    path = urllib.parse.quote(user, safe="")
    live = await server.live_stream(user)
    data = {"text": text, "list": [message, text], message: text}
    created = await server.notify(user, message, data=data, sourceType="PROPERTY")
    status, _, body, raw = await server.request(
        "POST", "/api/v1/events", {"event": name, "userIds": [user], "data": data}, as_user="svc", role="publisher"
    )
    assert (status, body) == (202, {"published": 1}), raw
    sentinel = await server.notify(user, "sentinel")
    sent = [("message", created), (name, data), ("message", sentinel)]

    events = await live.events(3)
    assert [(event.type, event.json()) for event in events] == sent
    cursors = [int(event.id) for event in events]
    assert cursors == sorted(set(cursors))
    live.close()

    replayed = await server.live_stream(user, headers={"Last-Event-ID": "0"})
    again = await replayed.events(3)
    assert [(event.type, event.id, event.json()) for event in again] == [
        (kind, str(cursor), payload) for (kind, payload), cursor in zip(sent, cursors, strict=True)
    ]
    replayed.close()
    status, _, page, raw = await server.request("GET", f"/api/v1/users/{path}/notifications", as_user=user)
    assert status == 200, raw
    assert [item["message"] for item in page["items"]] == ["sentinel", message]
