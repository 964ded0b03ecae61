"""Random ids from the per-thread pool (core/domain/ids.py)."""

from __future__ import annotations

import re
import threading

from core.domain import ids


def test_ids_are_hex_of_the_asked_length():
    assert re.fullmatch(r"[0-9a-f]{20}", ids.random_hex(10))
    assert re.fullmatch(r"[0-9a-f]{16}", ids.random_hex(8))


def test_ids_never_repeat_across_pool_refills():
    drawn = [ids.random_hex(10) for _ in range(3 * ids.POOL_BYTES // 10)]
    assert len(set(drawn)) == len(drawn)


def test_threads_draw_from_their_own_pools_without_sharing_bytes():
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(ids.random_hex(8) for _ in range(1000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for out in drawn for value in out]
    assert len(set(every)) == len(every) == 4000


def test_an_id_larger_than_the_pool_is_still_whole():
    assert len(ids.random_hex(ids.POOL_BYTES + 5)) == 2 * (ids.POOL_BYTES + 5)
