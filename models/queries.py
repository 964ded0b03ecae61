"""The queries the service runs (on a database thread, never on the loop).

Plain values in, model rows or plain values out; no HTTP, no wire format.
"""

from __future__ import annotations

from peewee import IntegrityError, Model, PostgresqlDatabase, SqliteDatabase

from models.tables import Notification, StreamEvent, StreamTicket, User, database


class Duplicate(Exception):
    """A row with that key exists already."""


_INSERT_SQL: dict[tuple[int, str], str] = {}


def _insert_returning(model: type[Model], values: dict[str, object], key: str) -> int:
    """``INSERT ... RETURNING key`` with SQL built once per table.

    The two inserts every publish makes go through here: building the query
    through peewee costs about 350 us more per publish, on the writer thread
    that shares the GIL with the IOLoop.  SQLite (3.35+) and PostgreSQL both
    support ``RETURNING``.
    """
    db = database.current()
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
    if "\x00" in user_id:
        # No id holds NUL (ids are validated), and PostgreSQL refuses the
        # parameter outright: answer "no such user" as SQLite would.
        return None
    return User.get_or_none(User.user_id == user_id)


# -- notifications ------------------------------------------------------------


#: What a new notification is stored from: ``(id, user_id, type, message,
#: action_url, source_type, data, created_at, payload)``, ``payload`` being
#: the data of the stream event that announces it.
NewNotification = tuple[str, str, str, str, str | None, str | None, str | None, int, str]


def store_notification(item: NewNotification) -> tuple[int, int]:
    """Store a new unread notification and the stream event announcing it.

    :returns: the notification's ``seq`` (the list's order) and the event's
        cursor on its user's stream.
    """
    nid, user_id, type, message, action_url, source_type, data, now_ms, payload = item
    # The raw inserts skip peewee's conversions: apply the message's own
    # (NUL on PostgreSQL, see NulSafeTextField).
    message = Notification.message.db_value(message)
    if isinstance(database.obj, PostgresqlDatabase):
        # One round trip for the three inserts: the writer thread spends most
        # of a publish waiting on PostgreSQL, one statement at a time.
        params = (
            user_id,
            nid,
            user_id,
            type,
            message,
            action_url,
            source_type,
            data,
            now_ms,
            None,
            user_id,
            payload,
            now_ms,
        )
        seq, cursor = database.execute_sql(_STORE_NOTIFICATION_PG, params).fetchone()
        return seq, cursor
    # Straight to the driver's cursor with SQL written once: through
    # peewee's execute_sql the three statements cost about three times what
    # SQLite itself spends on them (measured: 150 against 45 us of CPU).
    cursor = database.current().cursor()
    cursor.execute(_SQLITE_INSERT_NOTIFICATION, (nid, user_id, type, message, action_url, source_type, data, now_ms))
    seq = cursor.fetchone()[0]
    cursor.execute(_SQLITE_NEXT_CURSOR, (user_id,))
    taken = cursor.fetchone()[0]
    cursor.execute(_SQLITE_INSERT_EVENT, (user_id, taken, payload, now_ms))
    return seq, taken


_SQLITE_INSERT_NOTIFICATION = (
    'INSERT INTO "notifications" ("id", "user_id", "type", "message", "action_url", "source_type", "data",'
    ' "created_at", "read_at") VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL) RETURNING "seq"'
)
_SQLITE_NEXT_CURSOR = (
    'INSERT INTO "user_cursors" ("user_id", "last") VALUES (?, 1)'
    ' ON CONFLICT ("user_id") DO UPDATE SET "last" = "user_cursors"."last" + 1 RETURNING "last"'
)
_SQLITE_INSERT_EVENT = (
    'INSERT INTO "stream_events" ("user_id", "cursor", "name", "data", "created_at") VALUES (?, ?, NULL, ?, ?)'
)


# The cursor first: its row lock orders a user's creates across processes,
# and "seq" (the list's order) is drawn from the sequence only after it
# (stored reads from taken), so the list's order is the stream's order.
_STORE_NOTIFICATION_PG = (
    "WITH taken AS ("
    ' INSERT INTO "user_cursors" ("user_id", "last") VALUES (%s, 1)'
    ' ON CONFLICT ("user_id") DO UPDATE SET "last" = "user_cursors"."last" + 1 RETURNING "last"),'
    " stored AS ("
    ' INSERT INTO "notifications" ("id", "user_id", "type", "message", "action_url", "source_type", "data",'
    ' "created_at", "read_at") SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s FROM taken RETURNING "seq"),'
    " logged AS ("
    ' INSERT INTO "stream_events" ("user_id", "cursor", "name", "data", "created_at")'
    ' SELECT %s, "last", NULL, %s, %s FROM taken RETURNING "cursor")'
    ' SELECT stored."seq", logged."cursor" FROM stored, logged'
)


def store_notifications(items: list[NewNotification]) -> list[tuple[int, int]]:
    """:func:`store_notification` for several at once, in order.

    On PostgreSQL this is one statement for all of them (the writer thread
    otherwise waits on one round trip per notification); each user's
    cursors still follow the items' order, and so does the list's order.
    On SQLite a statement costs no round trip: one by one.
    """
    if not isinstance(database.obj, PostgresqlDatabase):
        return [store_notification(item) for item in items]
    params: list[object] = []
    for ord_, (nid, user_id, type, message, action_url, source_type, data, now_ms, payload) in enumerate(items):
        params += (
            ord_,
            nid,
            user_id,
            type,
            Notification.message.db_value(message),
            action_url,
            source_type,
            data,
            now_ms,
            payload,
        )
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s::bigint, %s)"] * len(items))
    found = database.execute_sql(_STORE_NOTIFICATIONS_PG % values, params).fetchall()
    assert [row[0] for row in found] == list(range(len(items)))
    return [(seq, cursor) for _, seq, cursor in found]


# Several creates in one statement.  Every user's cursor row is locked (in
# user order, so two batches cannot deadlock) before any "seq" is drawn: the
# window function needs all of "taken" first.  So, as for one create, the
# list's order is each stream's order, across processes.
_STORE_NOTIFICATIONS_PG = (
    'WITH input ("ord", "id", "user_id", "type", "message", "action_url", "source_type", "data",'
    ' "created_at", "payload") AS (VALUES %s),'
    ' counts AS (SELECT "user_id", count(*) AS "n" FROM input GROUP BY "user_id"),'
    " taken AS ("
    ' INSERT INTO "user_cursors" ("user_id", "last") SELECT "user_id", "n" FROM counts ORDER BY "user_id"'
    ' ON CONFLICT ("user_id") DO UPDATE SET "last" = "user_cursors"."last" + EXCLUDED."last"'
    ' RETURNING "user_id", "last"),'
    " numbered AS ("
    ' SELECT input.*, taken."last" - counts."n"'
    ' + row_number() OVER (PARTITION BY input."user_id" ORDER BY input."ord") AS "cursor"'
    ' FROM input JOIN counts USING ("user_id") JOIN taken USING ("user_id")),'
    " stored AS ("
    ' INSERT INTO "notifications" ("id", "user_id", "type", "message", "action_url", "source_type", "data",'
    ' "created_at", "read_at")'
    ' SELECT "id", "user_id", "type", "message", "action_url", "source_type", "data", "created_at", NULL'
    ' FROM numbered ORDER BY "ord" RETURNING "id", "seq"),'
    " logged AS ("
    ' INSERT INTO "stream_events" ("user_id", "cursor", "name", "data", "created_at")'
    ' SELECT "user_id", "cursor", NULL, "payload", "created_at" FROM numbered RETURNING 1)'
    ' SELECT numbered."ord", stored."seq", numbered."cursor" FROM numbered JOIN stored USING ("id")'
    ' ORDER BY numbered."ord"'
)


def get_notification(user_id: str, notification_id: str) -> Notification | None:
    """``user_id``'s notification ``notification_id`` (None for anyone else's)."""
    if "\x00" in notification_id:
        # Ids are "ntf_" + hex; PostgreSQL would refuse this parameter (a 500).
        return None
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


def next_cursor(user_id: str) -> int:
    """Take ``user_id``'s next cursor (1 for the first event).

    One statement on both databases; the row it locks serialises writers for
    this user until their transaction ends.
    """
    db = database.current()
    sql = _NEXT_CURSOR_SQL.get(id(db))
    if sql is None:
        sql = _NEXT_CURSOR_SQL[id(db)] = (
            f'INSERT INTO "user_cursors" ("user_id", "last") VALUES ({db.param}, 1) '
            'ON CONFLICT ("user_id") DO UPDATE SET "last" = "user_cursors"."last" + 1 RETURNING "last"'
        )
    return database.execute_sql(sql, (user_id,)).fetchone()[0]


_NEXT_CURSOR_SQL: dict[int, str] = {}


def append_event(user_id: str, name: str | None, data: str, now_ms: int) -> int:
    """Log one stream event; :returns: its cursor on ``user_id``'s stream."""
    db = database.obj
    if isinstance(db, PostgresqlDatabase):
        # One round trip instead of two: the writer thread spends most of a
        # publish waiting on PostgreSQL, one statement at a time.
        return database.execute_sql(_APPEND_EVENT_PG, (user_id, user_id, name, data, now_ms)).fetchone()[0]
    cursor = next_cursor(user_id)
    _insert_returning(
        StreamEvent, {"user_id": user_id, "cursor": cursor, "name": name, "data": data, "created_at": now_ms}, "id"
    )
    return cursor


_APPEND_EVENT_PG = (
    "WITH taken AS ("
    ' INSERT INTO "user_cursors" ("user_id", "last") VALUES (%s, 1)'
    ' ON CONFLICT ("user_id") DO UPDATE SET "last" = "user_cursors"."last" + 1 RETURNING "last")'
    ' INSERT INTO "stream_events" ("user_id", "cursor", "name", "data", "created_at")'
    ' SELECT %s, "last", %s, %s, %s FROM taken RETURNING "cursor"'
)


def log_event_for_users(user_ids: list[str], name: str, data: str, now_ms: int) -> list[int]:
    """Log one named event on the stream of each of ``user_ids`` (distinct).

    :returns: the event's cursor on each user's stream, in ``user_ids``' order.

    One statement takes every user's next cursor (and one more stores the
    rows on SQLite): an event for 1,000 users is not 2,000 round trips.
    """
    if not user_ids:
        return []
    db = database.current()
    if isinstance(db, PostgresqlDatabase):
        taken = dict(database.execute_sql(_LOG_EVENT_FOR_USERS_PG, (list(user_ids), name, data, now_ms)).fetchall())
        return [taken[user_id] for user_id in user_ids]
    cursor = db.cursor()
    taken = {}
    # Within SQLite's limit of 32,766 variables per statement.
    for start in range(0, len(user_ids), 10_000):
        part = user_ids[start : start + 10_000]
        marks = ", ".join(["?"] * len(part))
        taken.update(cursor.execute(_SQLITE_NEXT_CURSORS % ", ".join(["(?, 1)"] * len(part)), part).fetchall())
        # The rows come from the cursors just taken, in one statement: SQLite
        # writes them without handing the GIL back and forth per row, as
        # executemany would while the loop is busy sending this very event.
        cursor.execute(_SQLITE_LOG_FROM_CURSORS % marks, (name, data, now_ms, *part))
    return [taken[user_id] for user_id in user_ids]


_SQLITE_NEXT_CURSORS = (
    'INSERT INTO "user_cursors" ("user_id", "last") VALUES %s'
    ' ON CONFLICT ("user_id") DO UPDATE SET "last" = "user_cursors"."last" + 1 RETURNING "user_id", "last"'
)
# Within the writer's transaction, right after _SQLITE_NEXT_CURSORS: each
# user's "last" is the cursor that statement took for this event.
_SQLITE_LOG_FROM_CURSORS = (
    'INSERT INTO "stream_events" ("user_id", "cursor", "name", "data", "created_at")'
    ' SELECT "user_id", "last", ?, ?, ? FROM "user_cursors" WHERE "user_id" IN (%s)'
)
# Cursor rows are locked in user order, so two such statements (from two
# processes) cannot deadlock each other.
_LOG_EVENT_FOR_USERS_PG = (
    "WITH taken AS ("
    ' INSERT INTO "user_cursors" ("user_id", "last") SELECT u, 1 FROM unnest(%s::text[]) AS u ORDER BY u'
    ' ON CONFLICT ("user_id") DO UPDATE SET "last" = "user_cursors"."last" + 1 RETURNING "user_id", "last"),'
    " logged AS ("
    ' INSERT INTO "stream_events" ("user_id", "cursor", "name", "data", "created_at")'
    ' SELECT "user_id", "last", %s, %s, %s::bigint FROM taken RETURNING 1)'
    ' SELECT "user_id", "last" FROM taken'
)


def events_after(user_id: str, cursor: int, limit: int) -> list[tuple[int, str | None, str]]:
    """``(cursor, name, data)`` of ``user_id``'s events after ``cursor``, oldest first."""
    # Raw SQL: every reconnect runs this and history_bounds, and peewee's
    # query building costs several times the query itself.
    p = database.current().param
    sql = (
        f'SELECT "cursor", "name", "data" FROM "stream_events" WHERE "user_id" = {p} AND "cursor" > {p}'
        f' ORDER BY "cursor" LIMIT {p}'
    )
    return database.execute_sql(sql, (user_id, cursor, limit)).fetchall()


def history_bounds(user_id: str) -> tuple[int, int | None]:
    """``(last cursor handed out, oldest cursor still kept)`` for ``user_id``.

    ``(0, None)`` for a user who never had an event.
    """
    p = database.current().param
    sql = (
        f'SELECT (SELECT "last" FROM "user_cursors" WHERE "user_id" = {p}),'
        f' (SELECT MIN("cursor") FROM "stream_events" WHERE "user_id" = {p})'
    )
    last, oldest = database.execute_sql(sql, (user_id, user_id)).fetchone()
    return int(last or 0), (int(oldest) if oldest is not None else None)


def stream_start(
    user_id: str, after: int | None, limit: int
) -> tuple[int, int | None, list[tuple[int, str | None, str]] | None]:
    """What a new stream needs, in one read: :func:`history_bounds`, and
    with ``after`` the first ``limit`` events after it (else None)."""
    last, oldest = history_bounds(user_id)
    if after is None or after >= last:
        return last, oldest, None if after is None else []
    return last, oldest, events_after(user_id, after, limit)


def prune_events(cutoff_ms: int) -> int:
    """Delete events older than ``cutoff_ms``; :returns: how many.

    The per-user counters stay, so cursors keep increasing after a prune.
    """
    return StreamEvent.delete().where(StreamEvent.created_at < cutoff_ms).execute()


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


def checkpoint() -> None:
    """Copy SQLite's write-ahead log back into the database file.

    PASSIVE never waits for, or blocks, the writer.  Run periodically twice
    (``NotificationService.checkpoint``): on the upkeep thread alongside the
    writer, then on the writer between two batches, which completes it so
    that the next commit starts the log over.  Nothing on PostgreSQL.
    """
    if isinstance(database.obj, SqliteDatabase) and database.obj.database != ":memory:":
        database.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")


def ping() -> bool:
    """A trivial query: is the database answering?"""
    database.execute_sql("SELECT 1")
    return True
