"""Use cases: store, then emit; replay; read state; accounts and tickets.

Every change is stored together with its stream event (one transaction, in
the writer thread); once committed, the event is emitted on the bus, in
commit order, and the wiring carries it to the devices.  A failed push
never fails the request: the event is stored and replays on reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from core.domain.auth import (
    DUMMY_HASH,
    TICKET_TTL,
    Principal,
    TokenService,
    hash_password,
    hash_ticket,
    new_ticket,
    require_creator,
    require_event_publisher,
    require_reader,
    verify_password,
)
from core.domain.errors import AuthError, BadRequest, Conflict, NotFound, Unavailable
from core.domain.ids import random_hex
from core.domain.passwords import PasswordPool
from core.domain.validation import Encoded, compact_json, iso
from core.fanout.event_bus import EventBus
from core.fanout.messages import StreamMessage
from models import queries
from models.runner import DatabaseRunner, StorageUnavailable

log = logging.getLogger("notify.service")

#: Domain events the service emits; each payload is a StreamMessage.
NOTIFICATION_CREATED = "notification-created"
NOTIFICATION_READ = "notification-read"
NOTIFICATION_DELETED = "notification-deleted"
EVENT_PUBLISHED = "event-published"
DOMAIN_EVENTS = (NOTIFICATION_CREATED, NOTIFICATION_READ, NOTIFICATION_DELETED, EVENT_PUBLISHED)


def notification_json(row: Any) -> dict[str, Any]:
    """A stored notification in the contract's camelCase shape."""
    return {
        "notificationId": row.id,
        "userId": row.user_id,
        "type": row.type,
        "message": row.message,
        "createdAt": iso(row.created_at),
        "actionUrl": row.action_url,
        "sourceType": row.source_type,
        "readAt": iso(row.read_at),
        "data": json.loads(row.data) if row.data else None,
    }


def _store_one(item: queries.NewNotification, origin: str | None) -> StreamMessage:
    """Writer job: store one new notification; :returns: the message announcing it."""
    _, cursor = queries.store_notification(item)
    return StreamMessage(item[1], cursor, None, item[8], origin)


def _store_many(jobs: list[tuple[queries.NewNotification, str | None]]) -> list[StreamMessage]:
    """Writer job for a run of creates in one batch: one statement on PostgreSQL."""
    stored = queries.store_notifications([item for item, _ in jobs])
    return [
        StreamMessage(item[1], cursor, None, item[8], origin)
        for (_, cursor), (item, origin) in zip(stored, jobs, strict=True)
    ]


def new_notification_id() -> str:
    """A fresh public notification id (``ntf_`` and 20 hex digits)."""
    return "ntf_" + random_hex(10)


async def _available(pending: asyncio.Future[Any]) -> Any:
    """Await a database job; the database being out of reach becomes a 503."""
    try:
        return await pending
    except StorageUnavailable as exc:
        raise Unavailable("the database is unavailable, try again shortly", code="database_unavailable") from exc


class NotificationService:
    """The product's use cases over the store, the bus and the tokens.

    :param runner: runs queries off the loop.
    :param bus: where committed changes are announced.
    :param tokens: signs and verifies JWTs (None where no login happens, as in the CLI).
    :param history_days: how long stream events stay replayable.
    :param token_ttl: lifetime of tokens issued by :meth:`login`.
    :param passwords: where passwords are hashed (never the database
        readers, which every other request waits for); one of its own when
        None.  Whoever made it closes it.
    """

    def __init__(
        self,
        runner: DatabaseRunner,
        bus: EventBus,
        tokens: TokenService | None,
        history_days: float = 7.0,
        token_ttl: int = 3600,
        clock: Callable[[], float] = time.time,
        passwords: PasswordPool | None = None,
    ) -> None:
        self.runner = runner
        self.bus = bus
        self.tokens = tokens
        self.history_days = history_days
        self.token_ttl = token_ttl
        self._clock = clock
        self.passwords = passwords if passwords is not None else PasswordPool()

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await _available(self.runner.read(fn, *args))

    async def _write(self, fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
        # options: those of DatabaseRunner.write (on_commit, bulk, ...).
        return await _available(self.runner.write(fn, *args, **options))

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _emit(self, name: str) -> Callable[[list[StreamMessage]], None]:
        """An after-commit callback that announces each message under ``name``."""

        def announce(messages: list[StreamMessage]) -> None:
            for message in messages:
                self.bus.emit(name, message)

        return announce

    # -- notifications -----------------------------------------------------

    async def create_notification(
        self, principal: Principal, user_id: str, fields: dict[str, Any], origin: str | None = None
    ) -> dict[str, Any]:
        """Store a notification for ``user_id``, then push it to their devices.

        :param fields: validated by :func:`core.domain.validation.validate_notification`.
        :param origin: a connection id left out of the push.
        :returns: the notification as on the wire.
        """
        require_creator(principal, user_id)
        nid, now = new_notification_id(), self._now_ms()
        # The wire form is built here, once: it is both the response and
        # the stream event's data, stored with the notification.
        body = Encoded(
            {
                "notificationId": nid,
                "userId": user_id,
                "type": fields["type"],
                "message": fields["message"],
                "createdAt": iso(now),
                "actionUrl": fields["action_url"],
                "sourceType": fields["source_type"],
                "readAt": None,
                "data": fields["data"],
            }
        )
        data = compact_json(fields["data"]) if fields["data"] is not None else None
        item = (
            nid,
            user_id,
            fields["type"],
            fields["message"],
            fields["action_url"],
            fields["source_type"],
            data,
            now,
            body.text,
        )
        # One statement on PostgreSQL (queries.store_notification(s)): a
        # batch of creates needs no BEGIN/COMMIT around it.
        await self._write(
            _store_one, item, origin, on_commit=self._announce_created, bulk=_store_many, one_statement=True
        )
        return body

    def _announce_created(self, message: StreamMessage) -> None:
        self.bus.emit(NOTIFICATION_CREATED, message)

    async def list_notifications(
        self, principal: Principal, user_id: str, limit: int, before: str | None, unread_only: bool
    ) -> dict[str, Any]:
        """One page, newest first, with the cursor of the next page."""
        require_reader(principal, user_id)

        def load() -> dict[str, Any]:
            before_seq = None
            if before is not None:
                anchor = queries.get_notification(user_id, before)
                if anchor is None:
                    raise BadRequest("before must be the id of one of this user's notifications", code="invalid_query")
                before_seq = anchor.seq
            rows = queries.list_notifications(user_id, limit + 1, before_seq, unread_only)
            more = len(rows) > limit
            rows = rows[:limit]
            return {
                "items": [notification_json(row) for row in rows],
                "nextBefore": rows[-1].id if more else None,
                "unreadCount": queries.unread_count(user_id),
            }

        return await self._read(load)

    async def get_notification(self, principal: Principal, user_id: str, notification_id: str) -> dict[str, Any]:
        """One notification of ``user_id``.  :raises NotFound: unknown or someone else's."""
        require_reader(principal, user_id)
        row = await self._read(queries.get_notification, user_id, notification_id)
        if row is None:
            raise NotFound("no such notification")
        return notification_json(row)

    async def unread_count(self, principal: Principal, user_id: str) -> int:
        """How many of ``user_id``'s notifications are unread."""
        require_reader(principal, user_id)
        return await self._read(queries.unread_count, user_id)

    async def set_read(self, principal: Principal, user_id: str, notification_id: str, read: bool) -> dict[str, Any]:
        """Mark one notification read or unread; other devices get ``notification-read``."""
        require_reader(principal, user_id)
        now = self._now_ms()

        def change() -> tuple[dict[str, Any], list[StreamMessage]]:
            row = queries.get_notification(user_id, notification_id)
            if row is None:
                raise NotFound("no such notification")
            if not queries.set_read_at(row, now if read else None):
                return notification_json(row), []
            payload = compact_json(
                {"notificationIds": [row.id], "unreadCount": queries.unread_count(user_id), "read": read}
            )
            cursor = queries.append_event(user_id, NOTIFICATION_READ, payload, now)
            return notification_json(row), [StreamMessage(user_id, cursor, NOTIFICATION_READ, payload)]

        body, _ = await self._write(change, on_commit=lambda result: self._emit(NOTIFICATION_READ)(result[1]))
        return body

    async def read_all(self, principal: Principal, user_id: str) -> dict[str, Any]:
        """Mark everything read; devices get ``notification-read`` with the ids."""
        require_reader(principal, user_id)
        now = self._now_ms()

        def change() -> tuple[int, list[StreamMessage]]:
            ids = queries.mark_all_read(user_id, now)
            if not ids:
                return 0, []
            payload = compact_json({"notificationIds": ids, "unreadCount": 0, "read": True})
            cursor = queries.append_event(user_id, NOTIFICATION_READ, payload, now)
            return len(ids), [StreamMessage(user_id, cursor, NOTIFICATION_READ, payload)]

        updated, _ = await self._write(change, on_commit=lambda result: self._emit(NOTIFICATION_READ)(result[1]))
        return {"updated": updated, "unreadCount": 0}

    async def delete(self, principal: Principal, user_id: str, notification_id: str) -> None:
        """Delete one notification; devices get ``notification-deleted``."""
        require_reader(principal, user_id)
        now = self._now_ms()

        def change() -> list[StreamMessage]:
            row = queries.get_notification(user_id, notification_id)
            if row is None:
                raise NotFound("no such notification")
            queries.delete_notification(row)
            payload = compact_json({"notificationIds": [row.id], "unreadCount": queries.unread_count(user_id)})
            cursor = queries.append_event(user_id, NOTIFICATION_DELETED, payload, now)
            return [StreamMessage(user_id, cursor, NOTIFICATION_DELETED, payload)]

        await self._write(change, on_commit=self._emit(NOTIFICATION_DELETED))

    async def publish_event(self, principal: Principal, name: str, user_ids: list[str], data: dict[str, Any]) -> int:
        """Store a named event for each user and push it; :returns: users reached in the log."""
        require_event_publisher(principal)
        now = self._now_ms()
        payload = compact_json(data)

        def store() -> list[StreamMessage]:
            cursors = queries.log_event_for_users(user_ids, name, payload, now)
            return [
                StreamMessage(user_id, cursor, name, payload) for user_id, cursor in zip(user_ids, cursors, strict=True)
            ]

        # One statement on PostgreSQL; its weight commits it alone.
        messages = await self._write(
            store, on_commit=self._emit(EVENT_PUBLISHED), weight=len(user_ids), one_statement=True
        )
        return len(messages)

    # -- history -----------------------------------------------------------

    async def stream_bounds(self, user_id: str, after: int | None, page: int) -> tuple[int, int | None, list | None]:
        """``(last cursor, oldest kept cursor, first page after ``after``)`` of a user's stream, in one read.

        :param page: events to read after ``after`` (none when ``after`` is None).
        """
        return await self._read(queries.stream_start, user_id, after, page)

    async def events_after(self, user_id: str, cursor: int, limit: int) -> list:
        """Up to ``limit`` of a user's stream events after ``cursor``, oldest first: ``(cursor, name, data)``."""
        return await self._read(queries.events_after, user_id, cursor, limit)

    # -- accounts, tokens, tickets --------------------------------------------

    async def create_user(self, user_id: str, password: str, role: str = "user", replace: bool = False) -> None:
        """Create a local account (``replace``: or reset an existing one).

        :raises Conflict: the id is taken and ``replace`` is False.
        """
        # scrypt takes tens of milliseconds: off the loop, in its own pool.
        hashed = await self.passwords.run(hash_password, password)
        try:
            if replace:
                await self._write(queries.upsert_user, user_id, hashed, role, self._now_ms())
            else:
                await self._write(queries.create_user, user_id, hashed, role, self._now_ms())
        except queries.Duplicate:
            raise Conflict(f"user {user_id!r} exists already", code="user_exists") from None

    async def login(self, user_id: str, password: str) -> dict[str, Any]:
        """Check a password; :returns: a token and what the client needs to know.

        :raises AuthError: unknown user or wrong password (one message for
            both, and the same work for both).
        :raises Unavailable: ``login_busy`` (with ``Retry-After``): the
            password pool has as many logins as it takes.
        """
        user = await self._read(queries.get_user, user_id)
        stored = user.password_hash if user is not None else DUMMY_HASH
        # scrypt takes tens of milliseconds: off the loop, in its own pool,
        # which refuses (503 login_busy) rather than queue without bound.
        matches = await self.passwords.run(verify_password, password, stored)
        if user is None or not matches:
            raise AuthError("wrong user id or password", code="invalid_credentials")
        if self.tokens is None:
            raise Unavailable("this process cannot issue tokens", code="signing_unavailable")
        token = self.tokens.issue(user.user_id, user.role, self.token_ttl)
        return {
            "token": token,
            "tokenType": "Bearer",
            "expiresIn": self.token_ttl,
            "userId": user.user_id,
            "role": user.role,
        }

    async def issue_ticket(self, principal: Principal) -> dict[str, Any]:
        """A single-use stream credential valid for :data:`TICKET_TTL` seconds."""
        ticket, digest = new_ticket()
        now = self._now_ms()
        expires_ms = now + TICKET_TTL * 1000
        credential_ms = int(principal.expires_at * 1000) if principal.expires_at is not None else None
        await self._write(queries.store_ticket, digest, principal.user_id, principal.role, expires_ms, credential_ms)
        return {"ticket": ticket, "expiresIn": TICKET_TTL}

    async def redeem_ticket(self, ticket: str) -> Principal:
        """Consume a ticket.  :raises AuthError: unknown, used or expired."""
        row = await self._write(queries.take_ticket, hash_ticket(ticket), self._now_ms())
        if row is None:
            raise AuthError("the stream ticket is invalid, used or expired", code="invalid_ticket")
        expires = row.credential_expires_at / 1000 if row.credential_expires_at is not None else None
        return Principal(user_id=row.user_id, role=row.role, expires_at=expires)

    # -- housekeeping --------------------------------------------------------

    async def prune(self) -> int:
        """Apply history retention and forget expired tickets; :returns: events removed."""
        now = self._now_ms()
        cutoff = now - int(self.history_days * 86_400_000)

        def work() -> int:
            queries.prune_tickets(now)
            return queries.prune_events(cutoff)

        removed = await self._write(work)
        if removed:
            log.info("retention removed %d stream events older than %s days", removed, self.history_days)
        return removed

    async def prune_tickets(self) -> int:
        """Forget expired stream tickets; :returns: how many.

        Run every minute (``server.TICKET_PRUNE_EVERY``), not only with the
        hourly retention: tickets live 30 s, and a table holding an hour
        of them would grow with every stream opened.  One ``DELETE`` of
        expired rows; the table holds about a minute's tickets.
        """
        return await self._write(queries.prune_tickets, self._now_ms())

    async def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database file.

        Twice: most of it on the low-priority upkeep thread, alongside the
        writer; that one never completes under a steady stream of commits
        (new ones keep arriving while it copies), so the log would only
        grow.  Then the rest between two of the writer's batches, which is
        short and completes, so the next commit starts the log over.
        """
        await _available(self.runner.upkeep(queries.checkpoint))
        await self._write(queries.checkpoint, bare=True)

    async def check_database(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            return await self._read(queries.ping)
        except Exception:
            log.warning("database health check failed", exc_info=True)
            return False
