"""Pure encoding of Server-Sent Events to bytes (no I/O).

Every byte that reaches a stream is built here, so this is where user text
is kept from forging or splitting events: ``id`` and ``event`` lose any CR,
LF or NUL, and ``data`` is split on every line ending the WHATWG parser
knows (CRLF, LF, CR) into several ``data:`` lines, with NUL replaced.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN = re.compile(r"[\r\n\x00]")


def _field(text: str) -> str:
    """A single-line field value: CR, LF and NUL removed."""
    return _FORBIDDEN.sub("", text)


def encode_event(data: str, event: str | None = None, id: int | str | None = None, retry: int | None = None) -> bytes:
    """Encode one event as UTF-8 bytes, ending with the blank line.

    :param data: the payload; every line of it becomes its own ``data:``
        line, so the browser reassembles it with LF.  An empty string still
        yields ``data:`` because browsers drop events without one.
    :param event: the event name; ``None`` leaves the field out so that
        ``onmessage`` fires.
    :param id: the cursor; sets the browser's ``lastEventId``.
    :param retry: suggested reconnect delay in milliseconds.
    """
    head = f"id: {_field(str(id))}\n".encode() if id is not None else b""
    if retry is not None:
        return head + encode_body(data, event, retry)
    return head + encode_body(data, event)


def encode_body(data: str, event: str | None = None, retry: int | None = None) -> bytes:
    """Everything of an event after its ``id:`` line (see :func:`encode_event`).

    The same for every user an event goes to, so a broadcast encodes it once
    and puts each user's ``id:`` line in front.
    """
    parts = []
    if event is not None:
        parts.append(f"event: {_field(event)}\n")
    if retry is not None:
        parts.append(f"retry: {int(retry)}\n")
    for line in _LINE_BREAK.split(data.replace("\x00", "\ufffd")):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str) -> bytes:
    """Encode a comment line (``: text``), used for ``connected`` and ``ping``.

    A multi-line text becomes several comment lines, never a field.
    """
    lines = _LINE_BREAK.split(text.replace("\x00", ""))
    return ("".join(f": {line}\n" for line in lines) + "\n").encode("utf-8")


def chunk(frame: bytes) -> bytes:
    """Frame ``frame`` as one HTTP/1.1 chunk (size in hex, CRLF, data, CRLF)."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


class Frame:
    """One encoded event, shared by every device it goes to.

    Both forms are built once, so a broadcast to thousands of streams
    encodes and frames the event once: ``raw`` for close-delimited
    (HTTP/1.0) responses, ``chunked`` (one HTTP/1.1 chunk) for the rest.
    """

    __slots__ = ("raw", "chunked")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.chunked = chunk(raw)


PING = Frame(encode_comment("ping"))
