"""Hooks around a running server's coroutines, for tests about an interleaving.

A race test that only widens a window (a sleep somewhere) makes the
interleaving it is about likely, not certain.  Here the test runs its own
step at the exact point instead: :func:`around` wraps one coroutine method
of one object of the server under test (``monkeypatch`` undoes it), and the
test's ``before``/``after`` coroutines run there, on the loop, each time.
One that awaits an :class:`asyncio.Event` the test sets is a gate: the
server's task stops at that point until the test has done its part.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

#: A hook: called with the wrapped method's arguments.
Hook = Callable[..., Awaitable[None]]


def around(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, before: Hook | None = None, after: Hook | None = None) -> None:
    """Run ``before(*args)`` and ``after(*args)`` around every call of ``owner.name``.

    :param owner: the object whose (async) method is wrapped, e.g. the
        server's ``app.deps.replay``.
    :param before: awaited before the method runs.
    :param after: awaited after it returned, before its caller gets the
        result.
    """
    original = getattr(owner, name)

    async def hooked(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            await before(*args, **kwargs)
        result = await original(*args, **kwargs)
        if after is not None:
            await after(*args, **kwargs)
        return result

    monkeypatch.setattr(owner, name, hooked)
