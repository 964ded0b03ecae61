"""Peewee models, the database proxy, opening a database, and migrations.

Times are stored as integer milliseconds since the epoch (UTC): the same on
SQLite and PostgreSQL, cheap to compare for retention, and formatted to ISO
8601 only at the edge.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    CharField,
    Database,
    DatabaseProxy,
    Model,
    NodeList,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
)
from playhouse.migrate import SchemaMigrator, migrate

log = logging.getLogger("notify.db")


class ThreadBoundProxy(DatabaseProxy):
    """The models' database, which a thread may bind to its own.

    Every query runs on a runner thread (see :mod:`models.runner`), and each
    runner binds its threads to the database it was built for.  One process
    normally has one; tests build several applications in one process, and
    without this their queries would all go to the last one initialised.
    Threads that bound nothing use the one given to ``initialize()``.
    """

    __slots__ = ("_local", "_default")

    def __init__(self) -> None:
        self._local = threading.local()
        self._default: Database | None = None
        super().__init__()

    @property
    def obj(self) -> Database | None:
        """This thread's database, else the process default."""
        return getattr(self._local, "db", None) or self._default

    @obj.setter
    def obj(self, value: Database | None) -> None:
        self._default = value

    def __setattr__(self, attr: str, value: object) -> None:
        # peewee's Proxy only allows its own slots; ``obj`` is a property here.
        object.__setattr__(self, attr, value)

    def bind_thread(self, db: Database) -> None:
        """Make ``db`` this thread's database."""
        self._local.db = db

    def current(self) -> Database:
        """:attr:`obj`, which must be set: for the raw SQL paths that use the database itself.

        :raises AttributeError: nothing is bound or initialised (as peewee's
            proxy does when it is used uninitialised).
        """
        db = self.obj
        if db is None:
            raise AttributeError("Cannot use uninitialized Proxy.")
        return db


database = ThreadBoundProxy()

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


def _on_postgresql() -> bool:
    return isinstance(database.obj, PostgresqlDatabase)


class NulSafeTextField(TextField):
    """Text that may contain NUL (U+0000) on PostgreSQL too.

    SQLite stores NUL; PostgreSQL's ``text`` cannot (psycopg2 refuses the
    parameter), yet a notification message may carry one and must come back
    as sent on both.  On PostgreSQL the value is stored with NUL written as
    U+FFFF ``0`` and U+FFFF doubled: reversible, and every text without NUL
    or U+FFFF (a Unicode noncharacter) is stored unchanged.  SQLite is left
    as it was.
    """

    def db_value(self, value):
        """The stored form (escaped on PostgreSQL only)."""
        if isinstance(value, str) and ("\x00" in value or "\uffff" in value) and _on_postgresql():
            value = value.replace("\uffff", "\uffff\uffff").replace("\x00", "\uffff0")
        return super().db_value(value)

    def python_value(self, value):
        """The text as sent (unescaped on PostgreSQL only)."""
        value = super().python_value(value)
        if isinstance(value, str) and "\uffff" in value and _on_postgresql():
            value = _NUL_ESCAPE.sub(lambda match: "\x00" if match.group(1) == "0" else match.group(1), value)
        return value


_NUL_ESCAPE = re.compile("\uffff(.)", re.DOTALL)


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
    message = NulSafeTextField()
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
        path = url[len("sqlite:///") :]
        pragmas: dict[str, int | str] = {"foreign_keys": 1, "busy_timeout": 5000}
        if path != ":memory:":
            # WAL lets the reader threads see committed rows while the single
            # writer commits; synchronous=normal is durable across process
            # crashes in WAL mode, which is what a restart needs.
            pragmas.update({"journal_mode": "wal", "synchronous": "normal"})
            # No connection checkpoints on its own: SQLite would do it inside
            # the commit that crosses 1000 pages, fsyncs included, delaying
            # every publish in that batch.  The server runs it on a timer
            # instead (see queries.checkpoint).
            pragmas["wal_autocheckpoint"] = 0
        return SqliteDatabase(path, pragmas=pragmas, check_same_thread=False)
    if url.startswith(("postgresql://", "postgres://")):
        parts = urllib.parse.urlparse(url)
        # Connection parameters for the driver (sslmode, connect_timeout...),
        # passed through as the URL spells them: typed loosely, or they
        # would be matched against peewee's own keyword parameters.
        params: dict[str, Any] = dict(urllib.parse.parse_qsl(parts.query))
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
    db = database.current()
    with db.atomic():
        _lock_schema(db)
        db.create_tables(TABLES, safe=True)
        version = _schema_version()
        if version == 0:
            Meta.insert(key="schema_version", value=str(SCHEMA_VERSION)).on_conflict_ignore().execute()
            version = SCHEMA_VERSION
    for target, step in MIGRATIONS:
        if target > version:
            with db.atomic():
                _lock_schema(db)
                # Another process may have migrated while this one waited.
                if _schema_version() < target:
                    migrate(*step(SchemaMigrator.from_database(db)))
                    Meta.update(value=str(target)).where(Meta.key == "schema_version").execute()
                    log.info("migrated schema to version %d", target)
            version = target
    return version


#: Key of the PostgreSQL advisory lock that serialises schema changes.
_SCHEMA_LOCK = 0x6E6F7469  # "noti"


def _lock_schema(db: Database) -> None:
    """On PostgreSQL, hold off other processes' schema changes until commit.

    Two processes creating the same tables at once (several processes or
    hosts starting against a fresh database) make PostgreSQL fail one with
    a duplicate key in ``pg_type``; ``IF NOT EXISTS`` does not cover the
    race.  SQLite's write lock already serialises them.
    """
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))


def _schema_version() -> int:
    row = Meta.get_or_none(Meta.key == "schema_version")
    return int(row.value) if row else 0
