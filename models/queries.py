"""The queries the service runs (on a database thread, never on the loop).

Plain values in, model rows or plain values out; no HTTP, no wire format.
"""

from __future__ import annotations

import secrets
from typing import Iterable

from peewee import IntegrityError, fn

from models.tables import Meta, Notification, StreamEvent, StreamTicket, User, database

PRUNED_THROUGH = "pruned_through"


class Duplicate(Exception):
    """A row with that key exists already."""


_INSERT_SQL: dict[tuple[int, str], str] = {}


def _insert_returning(model: type, values: dict[str, object], key: str) -> int:
    """``INSERT ... RETURNING key`` with SQL built once per table.

    The two inserts every publish makes go through here: building the query
    through peewee costs about 350 us more per publish, on the writer thread
    that shares the GIL with the IOLoop.  SQLite (3.35+) and PostgreSQL both
    support ``RETURNING``.
    """
    db = database.obj
    cache_key = (id(db), model._meta.table_name + ":" + ",".join(values))
    sql = _INSERT_SQL.get(cache_key)
    if sql is None:
        left, right = db.quote[0], db.quote[1]
        columns = ", ".join(f"{left}{name}{right}" for name in values)
        params = ", ".join([db.param] * len(values))
        sql = f"INSERT INTO {left}{model._meta.table_name}{right} ({columns}) VALUES ({params}) RETURNING {left}{key}{right}"
        _INSERT_SQL[cache_key] = sql
    return database.execute_sql(sql, tuple(values.values())).fetchone()[0]


# -- users ------------------------------------------------------------------


def create_user(user_id: str, password_hash: str, role: str, now_ms: int) -> User:
    """Insert a user; :raises Duplicate: the id is taken."""
    try:
        with database.atomic():
            return User.create(user_id=user_id, password_hash=password_hash, role=role, created_at=now_ms)
    except IntegrityError:
        raise Duplicate(user_id) from None


def upsert_user(user_id: str, password_hash: str, role: str, now_ms: int) -> None:
    """Create or reset a user (demo accounts at start-up)."""
    updated = User.update(password_hash=password_hash, role=role).where(User.user_id == user_id).execute()
    if not updated:
        User.create(user_id=user_id, password_hash=password_hash, role=role, created_at=now_ms)


def get_user(user_id: str) -> User | None:
    """The user with ``user_id``, or None."""
    return User.get_or_none(User.user_id == user_id)


# -- notifications ------------------------------------------------------------


def insert_notification(
    user_id: str,
    type: str,
    message: str,
    action_url: str | None,
    source_type: str | None,
    data: str | None,
    now_ms: int,
) -> Notification:
    """Store a new unread notification with a fresh public id."""
    fields = {
        "id": "ntf_" + secrets.token_hex(10),
        "user_id": user_id,
        "type": type,
        "message": message,
        "action_url": action_url,
        "source_type": source_type,
        "data": data,
        "created_at": now_ms,
        "read_at": None,
    }
    seq = _insert_returning(Notification, fields, "seq")
    return Notification(seq=seq, **fields)


def get_notification(user_id: str, notification_id: str) -> Notification | None:
    """``user_id``'s notification ``notification_id`` (None for anyone else's)."""
    return Notification.get_or_none((Notification.id == notification_id) & (Notification.user_id == user_id))


def list_notifications(user_id: str, limit: int, before_seq: int | None, unread_only: bool) -> list[Notification]:
    """Newest first, at most ``limit``, older than ``before_seq`` if given."""
    query = Notification.select().where(Notification.user_id == user_id)
    if before_seq is not None:
        query = query.where(Notification.seq < before_seq)
    if unread_only:
        query = query.where(Notification.read_at.is_null())
    return list(query.order_by(Notification.seq.desc()).limit(limit))


def unread_count(user_id: str) -> int:
    """How many of ``user_id``'s notifications are unread."""
    return Notification.select().where((Notification.user_id == user_id) & Notification.read_at.is_null()).count()


def set_read_at(notification: Notification, read_at: int | None) -> bool:
    """Set the read time (None = unread); :returns: whether it changed."""
    if (notification.read_at is None) == (read_at is None):
        return False
    notification.read_at = read_at
    notification.save(only=[Notification.read_at])
    return True


def mark_all_read(user_id: str, now_ms: int) -> list[str]:
    """Mark every unread notification read; :returns: their ids."""
    ids = [
        row.id
        for row in Notification.select(Notification.id).where(
            (Notification.user_id == user_id) & Notification.read_at.is_null()
        )
    ]
    if ids:
        Notification.update(read_at=now_ms).where(
            (Notification.user_id == user_id) & Notification.read_at.is_null()
        ).execute()
    return ids


def delete_notification(notification: Notification) -> None:
    """Remove a notification."""
    notification.delete_instance()


# -- the event log ------------------------------------------------------------


def append_event(user_id: str, name: str | None, data: str, now_ms: int) -> int:
    """Log one stream event; :returns: its cursor."""
    return _insert_returning(StreamEvent, {"user_id": user_id, "name": name, "data": data, "created_at": now_ms}, "id")


def append_events(rows: Iterable[tuple[str, str | None, str]], now_ms: int) -> list[int]:
    """Log several events in order; :returns: their cursors."""
    return [append_event(user_id, name, data, now_ms) for user_id, name, data in rows]


def events_after(user_id: str, cursor: int, limit: int) -> list[tuple[int, str | None, str]]:
    """``user_id``'s events with a cursor above ``cursor``, oldest first."""
    query = (
        StreamEvent.select(StreamEvent.id, StreamEvent.name, StreamEvent.data)
        .where((StreamEvent.user_id == user_id) & (StreamEvent.id > cursor))
        .order_by(StreamEvent.id)
        .limit(limit)
        .tuples()
    )
    return list(query)


def head_cursor() -> int:
    """The highest cursor ever handed out (0 for an empty log)."""
    value = StreamEvent.select(fn.MAX(StreamEvent.id)).scalar()
    pruned = pruned_through()
    return max(int(value or 0), pruned)


def pruned_through() -> int:
    """The highest cursor removed by retention (0 if none was)."""
    row = Meta.get_or_none(Meta.key == PRUNED_THROUGH)
    return int(row.value) if row else 0


def prune_events(cutoff_ms: int) -> int:
    """Delete events older than ``cutoff_ms`` and remember the highest one removed.

    :returns: how many were deleted.
    """
    highest = StreamEvent.select(fn.MAX(StreamEvent.id)).where(StreamEvent.created_at < cutoff_ms).scalar()
    if highest is None:
        return 0
    deleted = StreamEvent.delete().where(StreamEvent.id <= highest).execute()
    current = pruned_through()
    if highest > current:
        Meta.insert(key=PRUNED_THROUGH, value=str(highest)).on_conflict(
            conflict_target=[Meta.key], update={Meta.value: str(highest)}
        ).execute()
    return deleted


# -- stream tickets -------------------------------------------------------------


def store_ticket(ticket_hash: str, user_id: str, role: str, expires_ms: int, credential_expires_ms: int | None) -> None:
    """Remember a new ticket by its hash."""
    StreamTicket.create(
        ticket_hash=ticket_hash,
        user_id=user_id,
        role=role,
        expires_at=expires_ms,
        credential_expires_at=credential_expires_ms,
    )


def take_ticket(ticket_hash: str, now_ms: int) -> StreamTicket | None:
    """Consume a ticket: it is deleted, so a second use finds nothing.

    :returns: the ticket if it existed and had not expired.
    """
    ticket = StreamTicket.get_or_none(StreamTicket.ticket_hash == ticket_hash)
    if ticket is None:
        return None
    # Only the one caller whose delete removed the row may use it.
    removed = StreamTicket.delete().where(StreamTicket.ticket_hash == ticket_hash).execute()
    if removed != 1 or ticket.expires_at <= now_ms:
        return None
    return ticket


def prune_tickets(now_ms: int) -> int:
    """Forget expired tickets."""
    return StreamTicket.delete().where(StreamTicket.expires_at <= now_ms).execute()


def ping() -> bool:
    """A trivial query: is the database answering?"""
    database.execute_sql("SELECT 1")
    return True
