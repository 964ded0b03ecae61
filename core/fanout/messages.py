"""The domain event a use case emits: one stored change on its way to a user's devices."""

from __future__ import annotations

import json
from typing import NamedTuple


class StreamMessage(NamedTuple):
    """One stored event on its way to a user's devices.

    A named tuple rather than a frozen dataclass: one is made per user an
    event goes to, and a frozen dataclass's ``__init__`` (a
    ``object.__setattr__`` per field) was a tenth of a broadcast's CPU.

    :param user_id: whose devices get it.
    :param cursor: its stream cursor (the event log id).
    :param event: the SSE event name; None for a notification.
    :param data: the ``data:`` payload, one line of JSON.
    :param exclude: a connection id to leave out (the originator).
    """

    user_id: str
    cursor: int
    event: str | None
    data: str
    exclude: str | None = None

    def to_json(self) -> str:
        """Serialise for a wire between processes."""
        return json.dumps(self._asdict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> StreamMessage:
        """The inverse of :meth:`to_json`; raises ``ValueError`` on bad input."""
        try:
            fields = json.loads(text)
            return cls(
                user_id=str(fields["user_id"]),
                cursor=int(fields["cursor"]),
                event=fields.get("event"),
                data=str(fields["data"]),
                exclude=fields.get("exclude"),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a stream message: {exc}") from None
