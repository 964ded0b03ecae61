"""A first end-to-end check: a notification reaches an open stream."""

import pytest

pytestmark = pytest.mark.timeout(30)


async def test_created_notification_reaches_open_stream(server):
    client = await server.live_stream("alice")
    created = await server.notify("alice", "QuickCheck completed")
    event = await client.next_event()
    assert event.type == "message"
    assert event.json() == created
    client.close()
