"""The product's core, one package per concern; dependencies point one way.

- :mod:`core.runtime`: configuration, the process supervisor, metrics and
  loop-lag sampling.
- :mod:`core.streams`: Server-Sent Events delivery: encoding, the registry
  of open streams (the SSE manager), replay and each stream's writer.
- :mod:`core.domain`: the use cases (store, then emit), credentials,
  validation and the domain errors; the only way to the database (``models``).
- :mod:`core.fanout`: how a stored change travels: the message, the
  in-process event bus and the brokers between processes (local, Redis).
- :mod:`core.transport`: the HTTP/1.1 connection layer under Tornado's
  ``Application``, and the bounded output buffer every socket writes through.

A package imports only packages below it in this list (``runtime`` may use
all of them, ``transport`` and ``fanout`` none), and nothing in ``core``
imports ``handlers`` or ``server``; ``tests/test_architecture.py`` reads the
imports and holds that.
"""
