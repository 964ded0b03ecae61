"""What the test modules share; a test module imports from here, never from another test module.

- :mod:`~tests.support.checks`: the contract's error body, cursors, stored
  counts, and ``wait_until`` for in-process server state;
- :mod:`~tests.support.sse`: an SSE parser, a chunked decoder, an async
  stream client and a JSON request helper for servers on the test's loop;
- :mod:`~tests.support.blocking_sse`: a blocking stream client for servers
  in other processes;
- :mod:`~tests.support.rawhttp`: hand-written HTTP/1.1 exchanges on raw
  sockets;
- :mod:`~tests.support.processes`: ``server.py`` in a subprocess, and
  ``wait_for`` for other processes' state;
- :mod:`~tests.support.redis_server`: a real ``redis-server``;
- :mod:`~tests.support.hooks`: a test's own step at an exact point of a
  running server's coroutine (gates for race tests);
- :mod:`~tests.support.leaks`: the credential leak scanner the whole run
  is watched by.
"""
