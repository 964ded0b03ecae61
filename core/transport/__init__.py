"""HTTP/1.1 under Tornado's ``Application``: connections, parsing, output.

:mod:`~core.transport.http1` accepts connections, parses requests with
httptools (llhttp) and implements Tornado's ``HTTPConnection`` for the
application, with the limits that keep hostile clients to their share;
:mod:`~core.transport.output` is the bounded buffer of bytes the kernel has
not taken yet, shared by HTTP connections and event streams.  It imports
nothing else of the product.
"""
