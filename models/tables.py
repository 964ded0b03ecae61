"""Peewee models, the database proxy, opening a database, and migrations.

Times are stored as integer milliseconds since the epoch (UTC): the same on
SQLite and PostgreSQL, cheap to compare for retention, and formatted to ISO
8601 only at the edge.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Callable

from peewee import (
    BigAutoField,
    BigIntegerField,
    CharField,
    Database,
    DatabaseProxy,
    Model,
    NodeList,
    SQL,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
)
from playhouse.migrate import SchemaMigrator, migrate

log = logging.getLogger("notify.db")

database = DatabaseProxy()

SCHEMA_VERSION = 1


class CursorField(BigAutoField):
    """An auto-increment key that never reuses a value.

    SQLite's plain ``INTEGER PRIMARY KEY`` hands out ``max(id) + 1``, so once
    retention deleted the newest rows, cursors would go backwards;
    ``AUTOINCREMENT`` forbids that.  PostgreSQL sequences never go back.
    """

    def ddl(self, ctx):
        """Column definition, with ``AUTOINCREMENT`` on SQLite."""
        node = super().ddl(ctx)
        if isinstance(database.obj, SqliteDatabase):
            return NodeList((node, SQL("AUTOINCREMENT")))
        return node


class BaseModel(Model):
    """Every table lives in :data:`database`."""

    class Meta:
        database = database


class Meta(BaseModel):
    """Key/value facts about the store (the schema version)."""

    key = CharField(primary_key=True, max_length=64)
    value = TextField()

    class Meta:
        table_name = "meta"


class User(BaseModel):
    """A local account that can log in (tokens may name users not here)."""

    user_id = CharField(primary_key=True, max_length=128)
    password_hash = CharField(max_length=255)
    role = CharField(max_length=16, default="user")
    created_at = BigIntegerField()

    class Meta:
        table_name = "users"


class Notification(BaseModel):
    """A stored notification with its read state."""

    seq = CursorField()
    id = CharField(unique=True, max_length=40)
    user_id = CharField(max_length=128)
    type = CharField(max_length=16)
    message = TextField()
    action_url = TextField(null=True)
    source_type = CharField(max_length=64, null=True)
    data = TextField(null=True)
    created_at = BigIntegerField()
    read_at = BigIntegerField(null=True)

    class Meta:
        table_name = "notifications"
        indexes = ((("user_id", "seq"), False), (("user_id", "read_at"), False))


class UserCursor(BaseModel):
    """The last stream cursor handed out for each user.

    Cursors count 1, 2, 3... per user.  Taking the next one is an upsert of
    this row, whose lock holds every other writer for the same user until
    commit, so a user's events commit in cursor order even with several
    processes writing, and a gap (3 arriving after 1) always means an event
    still on its way, never one lost.
    """

    user_id = CharField(primary_key=True, max_length=128)
    last = BigIntegerField()

    class Meta:
        table_name = "user_cursors"


class StreamEvent(BaseModel):
    """The event log, replayed on reconnect from a user's cursor.

    Written in the same transaction as the change it announces, so no event
    exists without its row and the other way round.
    """

    id = CursorField()
    user_id = CharField(max_length=128)
    cursor = BigIntegerField()
    name = CharField(max_length=64, null=True)
    data = TextField()
    created_at = BigIntegerField()

    class Meta:
        table_name = "stream_events"
        indexes = ((("user_id", "cursor"), True), (("created_at",), False))


class StreamTicket(BaseModel):
    """A single-use stream credential, kept as a hash until used or expired."""

    ticket_hash = CharField(primary_key=True, max_length=64)
    user_id = CharField(max_length=128)
    role = CharField(max_length=16)
    expires_at = BigIntegerField()
    credential_expires_at = BigIntegerField(null=True)

    class Meta:
        table_name = "stream_tickets"


TABLES = [Meta, User, Notification, UserCursor, StreamEvent, StreamTicket]

# Later schema changes append (version, step) here; each step gets a
# playhouse.migrate SchemaMigrator and runs inside one transaction.
MIGRATIONS: list[tuple[int, Callable[[SchemaMigrator], list]]] = []


def open_database(url: str) -> Database:
    """A peewee database for ``sqlite:///path``, ``sqlite:///:memory:`` or ``postgresql://``.

    :raises ValueError: for any other URL.
    """
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        pragmas = {"foreign_keys": 1, "busy_timeout": 5000}
        if path != ":memory:":
            # WAL lets the reader threads see committed rows while the single
            # writer commits; synchronous=normal is durable across process
            # crashes in WAL mode, which is what a restart needs.
            pragmas.update({"journal_mode": "wal", "synchronous": "normal"})
        return SqliteDatabase(path, pragmas=pragmas, check_same_thread=False)
    if url.startswith(("postgresql://", "postgres://")):
        parts = urllib.parse.urlparse(url)
        params = dict(urllib.parse.parse_qsl(parts.query))
        return PostgresqlDatabase(
            (parts.path or "/").lstrip("/") or "postgres",
            user=urllib.parse.unquote(parts.username or "") or None,
            password=urllib.parse.unquote(parts.password or "") or None,
            host=parts.hostname or None,
            port=parts.port or None,
            **params,
        )
    raise ValueError(f"unsupported database URL scheme in {url.split(':', 1)[0]!r}")


def is_memory(url: str) -> bool:
    """Whether ``url`` names an in-memory SQLite database (one connection only)."""
    return url == "sqlite:///:memory:"


def create_schema() -> int:
    """Create missing tables and run pending migrations; :returns: the schema version.

    Call from the thread that owns writes.
    """
    db = database.obj
    with db.atomic():
        db.create_tables(TABLES, safe=True)
        row = Meta.get_or_none(Meta.key == "schema_version")
        version = int(row.value) if row else 0
        if version == 0:
            Meta.insert(key="schema_version", value=str(SCHEMA_VERSION)).on_conflict_ignore().execute()
            version = SCHEMA_VERSION
    for target, step in MIGRATIONS:
        if target > version:
            with db.atomic():
                migrate(*step(SchemaMigrator.from_database(db)))
                Meta.update(value=str(target)).where(Meta.key == "schema_version").execute()
            log.info("migrated schema to version %d", target)
            version = target
    return version
