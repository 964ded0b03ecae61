"""The private names of Tornado the product still relies on, checked against the installed Tornado.

Each is listed in docs/ARCHITECTURE.md ("Tornado's private names") with
its reason; ``requirements.txt`` pins Tornado.  If an upgrade renames or
changes one, the test for it fails here, by name, rather than the product
failing somewhere at run time.  Both serve only the application under
Tornado's own ``HTTPServer`` (as the tests that compare the two layers
run it): the product's own connection layer needs neither.
"""

from __future__ import annotations

import socket

import tornado
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream

from handlers.stream import chunked_output


def test_tornado_is_the_pinned_version():
    with open("requirements.txt", encoding="utf-8") as handle:
        pins = dict(line.strip().split("==", 1) for line in handle if "==" in line and not line.startswith("#"))
    assert tornado.version == pins["tornado"]


def test_http1connection_keeps_whether_it_chunks_its_output():
    # handlers.stream.chunked_output: a stream opened through Tornado's own
    # HTTPServer must keep writing chunk frames if, and only if, Tornado
    # started a chunked answer; Tornado says so only here.
    connection = HTTP1Connection.__new__(HTTP1Connection)
    connection._chunking_output = True
    assert chunked_output(connection) is True
    assert "_chunking_output" in HTTP1Connection.write_headers.__code__.co_names


def test_iostream_counts_the_bytes_it_has_read_ahead():
    # core.streams.writer.SocketWriter.take_over: bytes the client sent
    # after a stream's request, already read into the IOStream, would never
    # be read by anyone: such a stream is refused.  No public method says
    # how many there are.
    left, right = socket.socketpair()
    try:
        stream = IOStream(left)
        assert stream._read_buffer_size == 0
        assert "_read_buffer_size" in IOStream._read_to_buffer.__code__.co_names
        stream.close()
    finally:
        right.close()
