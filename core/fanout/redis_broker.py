"""The Redis broker: fan-out between processes over Redis pub/sub.

Every process publishes its stream messages on one channel and subscribes to
it; each delivers its own messages at once and the others' as they arrive.
It keeps the :class:`core.fanout.broker.Broker` contract that
``tests/test_broker_contract.py`` checks for every implementation.  The
processes of one deployment share the Redis database number and the
namespace (``--redis-namespace``); :func:`redis_names` derives the channel
and keys from both, so deployments sharing a Redis server never meet.

Pub/sub keeps nothing for a subscriber that is away, so the broker's job
during trouble is to *notice* and to say so::

    start ──> subscribe ──confirmed──> live: deliver others' messages
                  ^                      │ error, EOF, or PING unanswered
                  │                      ▼
                  └── backoff 0.1 s .. 5 s, jittered ── down: healthy() False,
                      (first success after a loss        one warning per outage,
                       calls resync(): every open        local publishes still
                       stream catches up from the DB)    delivered here

Publishing never waits for Redis: :meth:`RedisBroker.publish` delivers here,
appends to an outbox and returns; one sender task drains the outbox in order
(a pipeline per batch).  A batch Redis does not take is dropped: every
message is stored before it is published, so the first batch that gets
through again starts with ``resync``, and every other process catches its
streams up from the database (a process whose own subscription was lost
does that anyway).  Duplicates that this may cause are harmless: devices
skip cursors they have seen.

``GET /api/v1/stats?scope=cluster`` reads short-lived heartbeat keys
(``notify:<db>:<namespace>:instance:<id>`` = this process's stats,
refreshed every ``heartbeat_interval`` and expiring after three of them),
so a process that dies without closing disappears on its own.

Wire format on the channel: the origin instance id, a newline, then
:meth:`StreamMessage.to_json`.  The id comes first so that a process drops
its own echoes without parsing JSON.  The body ``resync`` asks every other
process to catch its streams up (sent after this one dropped messages).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import random
import re
import urllib.parse
from typing import Any, NamedTuple, cast

import redis.asyncio as aioredis
import redis.connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from core.fanout.broker import Deliver, Resync, Stats, deliver_safely
from core.fanout.messages import StreamMessage

log = logging.getLogger("notify.broker")

#: The control body that asks other processes to resync.
RESYNC = b"resync"
#: Messages sent in one pipeline round trip at most.
MAX_BATCH = 500
#: Seconds between two warnings about malformed messages on the channel
#: (a misconfigured publisher must not flood the log).
BAD_MESSAGE_LOG_EVERY = 60.0

_SUBSCRIPTION, _PUBLISHING = "subscription", "publishing"

#: What a namespace may be: the alphabet of ``--redis-namespace`` (which
#: core/runtime/config.py checks on the flag), empty meaning none.  No ``:`` in it
#: is what keeps one deployment's names from being a prefix of another's.
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{0,64}\Z")


class RedisNames(NamedTuple):
    """The pub/sub channel and key names of one deployment.

    :param channel: the channel its processes publish on and subscribe to.
    :param key_prefix: its heartbeat keys are ``key_prefix + instance_id``.
    """

    channel: str
    key_prefix: str


def redis_names(url: str, namespace: str = "") -> RedisNames:
    """The channel and keys of the deployment at ``url`` with ``namespace``.

    Both start with ``notify:<db>:<namespace>:``, ``<db>`` being the
    database number the URL selects (0 when it names none) and the
    namespace field present even when empty::

        URL and namespace            channel               heartbeat keys
        redis://host (or /0), none   notify:0::events      notify:0::instance:<id>
        redis://host/1, none         notify:1::events      notify:1::instance:<id>
        redis://host/1, "blue"       notify:1:blue:events  notify:1:blue:instance:<id>

    Pub/sub channels belong to the whole Redis server, whatever database a
    client selected, hence the database number in the channel.  Keys live
    in the selected database anyway; the same prefix keeps two namespaces
    of one database apart.  A namespace has no ``:``, so the prefix of one
    deployment is never the beginning of another's (``a`` and ``a.b``, or
    no namespace and one named ``instance``): a ``SCAN`` for one
    deployment's keys never matches another's.

    :raises ValueError: ``url`` cannot be parsed, or names a negative
        database, or ``namespace`` is outside ``[A-Za-z0-9_.-]{0,64}``.
    """
    if not NAMESPACE.match(namespace):
        raise ValueError("the namespace must be at most 64 letters, digits, '_', '.' or '-'")
    # The same parser redis-py's from_url uses: the number here is the one
    # the connections SELECT.
    db = redis.connection.parse_url(url).get("db", 0)
    if db < 0:
        raise ValueError(f"the database number must be 0 or more, got {db}")
    prefix = f"notify:{db}:{namespace}:"
    return RedisNames(channel=prefix + "events", key_prefix=prefix + "instance:")


def redact(url: str) -> str:
    """``url`` without its password, fit for a log line."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _jittered(delay: float) -> float:
    # Jitter keeps a fleet of processes from reconnecting in lockstep when
    # Redis comes back.
    return delay * random.uniform(0.5, 1.0)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class RedisBroker:
    """Carries stream messages between processes through one Redis.

    :param url: ``redis://[:password@]host:port/db`` (or ``rediss://``).
    :param instance_id: this process's id (the origin of its messages and
        the name of its heartbeat key); must not contain a newline.
    :param namespace: ``--redis-namespace``; with the URL's database number
        it names the channel and keys (:func:`redis_names`), so that only
        processes of the same deployment meet.
    :param heartbeat_interval: seconds between heartbeats; also how long the
        subscription may be silent before it is probed with ``PING``.
    :param backoff_min: first reconnect delay in seconds (doubling...).
    :param backoff_max: ...up to this.
    :param max_pending: messages the outbox may hold; past that the oldest
        are dropped (a memory bound if Redis is slow: they are stored, and
        the other processes are told to resync).
    :param connect_timeout: seconds a connection attempt or a command may
        take before Redis counts as unreachable.
    :raises ValueError: ``url`` cannot be parsed (a bad port, say), or
        ``namespace`` is not a valid one; an unreachable Redis is not an
        error here: the broker starts, reports itself down and keeps
        retrying.

    :ivar channel: the deployment's pub/sub channel.
    :ivar key_prefix: its heartbeat keys are ``key_prefix + instance_id``.
    """

    def __init__(
        self,
        url: str,
        instance_id: str,
        namespace: str = "",
        heartbeat_interval: float = 2.0,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        max_pending: int = 10_000,
        connect_timeout: float = 2.0,
    ) -> None:
        if not instance_id or "\n" in instance_id:
            raise ValueError("instance_id must be non-empty and free of newlines")
        self.url = url
        self.instance_id = instance_id
        self.namespace = namespace
        self.channel, self.key_prefix = redis_names(url, namespace)
        self.heartbeat_interval = heartbeat_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self._key = self.key_prefix + instance_id
        self._origin = instance_id.encode()
        self._prefix = self._origin + b"\n"
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": connect_timeout,
            "health_check_interval": 0,
            # Server-pushed maintenance notices are a Redis Cloud feature; on
            # other servers asking for them costs a failing command per connect.
            "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        }
        # No retries inside redis-py for the subscription: its PubSub would
        # silently reconnect and re-subscribe, hiding the very gap after
        # which the streams must be resynced.
        self._subscriber = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        # Commands may retry once at once: that replaces a pooled connection
        # that went stale in an outage without reporting a new one.
        self._commands = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 1), **options)
        self._deliver: Deliver | None = None
        self._resync: Resync | None = None
        self._stats: Stats | None = None
        self._tasks: list[asyncio.Task] = []
        self._resync_tasks: set[asyncio.Future] = set()
        self._outbox: collections.deque[bytes] = collections.deque()
        self._dropped = 0
        self._dropped_announced = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._retry_now = asyncio.Event()
        self._first_attempt: asyncio.Future | None = None
        self._subscribed = False
        self._down: set[str] = set()
        self._down_since = 0.0
        #: close() has begun: no more publishing or delivering.
        self._stopping = False
        #: close() is past flushing the outbox: the background loops end.
        self._closed = False
        self._bad_messages = 0
        self._bad_logged_at: float | None = None

    # -- the Broker protocol -------------------------------------------------

    async def start(self, deliver: Deliver, resync: Resync, stats: Stats | None) -> None:
        """Subscribe, write the first heartbeat and begin delivering.

        Waits for the first subscription attempt only: if Redis is
        unreachable this returns all the same (with :meth:`healthy` False)
        and the broker keeps retrying in the background; its first success
        then calls ``resync``, since streams opened meanwhile may have
        missed other processes' messages.  With ``stats`` None the broker
        writes no heartbeat: it takes part in the channel without being
        listed by :meth:`instances` (a listener, such as a test's probe).
        """
        if self._tasks or self._stopping:
            raise RuntimeError("a RedisBroker starts once")
        self._deliver, self._resync, self._stats = deliver, resync, stats
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future()
        self._tasks.append(loop.create_task(self._subscribe_loop(), name="redis-broker-subscriber"))
        self._tasks.append(loop.create_task(self._send_loop(), name="redis-broker-sender"))
        try:
            # The timeout is a backstop; a connect attempt has its own.
            await asyncio.wait_for(asyncio.shield(self._first_attempt), 3 * self.connect_timeout)
        except TimeoutError:
            pass
        await self.heartbeat()
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="redis-broker-heartbeat"))

    def publish(self, message: StreamMessage) -> None:
        """Deliver ``message`` here now, and queue it for the other processes.

        Never raises and never waits for Redis.
        """
        if self._stopping:
            return
        deliver_safely(self._deliver, message)
        self._outbox.append(self._prefix + message.to_json().encode())
        self._trim_outbox()
        self._idle.clear()
        self._wake.set()

    async def instances(self) -> list[dict]:
        """This process's stats first (live), then every other live process's
        (from its heartbeat key), sorted by instance id.

        While Redis is unreachable only this process is listed.
        """
        own = self._stats() if self._stats is not None else None
        others: dict[str, dict] = {}
        try:
            values = await asyncio.wait_for(self._read_heartbeats(), self.connect_timeout)
        except Exception as exc:  # the cluster view is best effort; /health reports the outage
            log.debug("reading heartbeats failed: %s", _describe(exc))
            values = []
        for key, raw in values:
            if raw is None or key == self._key.encode():
                continue  # expired between SCAN and MGET, or our own (stale) copy
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("instanceId"), str):
                others[entry["instanceId"]] = entry
        listed = [own] if own is not None else []
        return listed + [others[name] for name in sorted(others)]

    async def close(self) -> None:
        """Stop delivering, flush the outbox briefly, remove the heartbeat
        key and close the connections."""
        if self._stopping:
            return
        flush = self._tasks and not self._idle.is_set() and self.healthy()
        self._stopping = True
        self._deliver = None
        if flush:
            # What is already queued was stored: give it a moment to reach
            # the others rather than leaving it to their next gap.
            try:
                await asyncio.wait_for(self._idle.wait(), 1.0)
            except TimeoutError:
                pass
        self._closed = True
        # redis-py writes under asyncio.wait_for, which on Python 3.11 can
        # swallow a cancellation that lands as the write completes
        # (CPython gh-86296): the loops also stop on ``_closed``, and a task
        # that swallowed one cancel gets another.
        pending = {task for task in self._tasks if not task.done()}
        for _ in range(5):
            for task in pending:
                task.cancel()
            if not pending:
                break
            _, pending = await asyncio.wait(pending, timeout=self.connect_timeout)
        for task in self._tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                log.debug("broker task %s ended with %s", task.get_name(), _describe(error))
        self._subscribed = False
        try:
            await asyncio.wait_for(self._commands.delete(self._key), self.connect_timeout)
        except Exception as exc:  # the key expires by itself anyway
            log.debug("removing the heartbeat key failed: %s", _describe(exc))
        for client in (self._subscriber, self._commands):
            try:
                await client.aclose()
            except Exception as exc:
                log.debug("closing a Redis connection failed: %s", _describe(exc))

    def healthy(self) -> bool:
        """Whether the subscription is up and publishing works."""
        return self._subscribed and not self._down and not self._stopping

    # -- extras --------------------------------------------------------------

    async def heartbeat(self) -> bool:
        """Write this process's stats to its heartbeat key now.

        Done every ``heartbeat_interval`` anyway; tests call it to see a
        change in ``?scope=cluster`` without waiting.  Never raises.

        :returns: whether Redis took it.
        """
        if self._stats is None or self._stopping:
            return False
        try:
            payload = json.dumps(self._stats(), separators=(",", ":"))
            ttl_ms = max(1, int(3000 * self.heartbeat_interval))
            await self._commands.set(self._key, payload, px=ttl_ms)
            return True
        except Exception as exc:  # an outage is reported by the links, not here
            log.debug("heartbeat failed: %s", _describe(exc))
            return False

    async def _read_heartbeats(self) -> list[tuple[bytes, bytes | None]]:
        """``(key, value)`` of every heartbeat key (SCAN, then one MGET)."""
        pattern = _glob_escape(self.key_prefix) + "*"
        keys = [key async for key in self._commands.scan_iter(match=pattern, count=1000)]
        if not keys:
            return []
        # Bytes, not str: the clients are made without decode_responses
        # (redis-py's annotations cover both modes).
        values = cast("list[bytes | None]", await self._commands.mget(keys))
        return list(zip(keys, values, strict=True))

    # -- the subscription ----------------------------------------------------

    async def _subscribe_loop(self) -> None:
        delay = self.backoff_min
        lost = False
        # Every loop also ends on ``_closed``: see close() for why
        # cancelling alone is not enough.
        while not self._closed:
            pubsub = self._subscriber.pubsub()
            try:
                await self._subscribe(pubsub)
                self._subscribed = True
                delay = self.backoff_min
                self._link_ok(_SUBSCRIPTION)
                # A failing sender retries now, not at the end of its backoff.
                self._retry_now.set()
                self._settle_first_attempt()
                if lost:
                    self._call_resync()
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure of the link means: reconnect
                self._subscribed = False
                lost = True
                self._link_failed(_SUBSCRIPTION, exc)
                self._settle_first_attempt()
            finally:
                self._subscribed = False
                await self._close_pubsub(pubsub)
            if self._closed:
                return
            await asyncio.sleep(_jittered(delay))
            delay = min(delay * 2, self.backoff_max)

    async def _subscribe(self, pubsub: Any) -> None:
        """Subscribe and wait for Redis to confirm it.

        Until the confirmation, another process's publish may not reach us;
        resync must only run after it, so that anything committed after the
        catch-up's read arrives live.
        """
        await pubsub.subscribe(self.channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("Redis did not confirm the subscription")
            reply = await pubsub.get_message(timeout=remaining)
            if reply is not None and reply["type"] == "subscribe":
                return

    async def _listen(self, pubsub: Any) -> None:
        """Deliver messages until the link fails (raises) or the broker closes.

        A silent link is probed with ``PING``; three silent intervals in a
        row mean Redis (or the network to it) is gone even though the socket
        never said so.
        """
        loop = asyncio.get_running_loop()
        interval = self.heartbeat_interval
        heard = loop.time()
        while not self._closed:
            reply = await pubsub.get_message(timeout=interval)
            if reply is None:
                if loop.time() - heard >= 3 * interval:
                    raise TimeoutError(f"no answer from Redis for {3 * interval:g} s")
                await pubsub.ping()
                continue
            heard = loop.time()
            kind = reply["type"]
            if kind == "message":
                self._receive(reply["data"])
            elif kind == "unsubscribe":
                raise ConnectionError("Redis ended the subscription")

    def _receive(self, data: Any) -> None:
        """Deliver one message from the channel; skip echoes and garbage."""
        if not isinstance(data, bytes):
            self._bad_message("not bytes")
            return
        origin, newline, body = data.partition(b"\n")
        if not newline:
            self._bad_message("no origin line")
            return
        if origin == self._origin:
            return  # delivered locally when it was published
        if body == RESYNC:
            self._call_resync()
            return
        try:
            message = StreamMessage.from_json(body)
            # from_json checks the shape, not these types; the SSE encoder
            # would fail on them later, with a traceback.
            if not isinstance(message.event, (str, type(None))) or not isinstance(message.exclude, (str, type(None))):
                raise ValueError("event and exclude must be strings or null")
        except Exception as exc:  # whatever the bytes, the subscription goes on
            self._bad_message(_describe(exc))
            return
        deliver_safely(self._deliver, message)

    def _bad_message(self, reason: str) -> None:
        self._bad_messages += 1
        now = asyncio.get_running_loop().time()
        if self._bad_logged_at is None or now - self._bad_logged_at >= BAD_MESSAGE_LOG_EVERY:
            self._bad_logged_at = now
            log.warning(
                "instance %s skipped a malformed message on Redis channel %s (%s); %d so far",
                self.instance_id,
                self.channel,
                reason,
                self._bad_messages,
                extra={"instance": self.instance_id},
            )

    async def _close_pubsub(self, pubsub: Any) -> None:
        try:
            await pubsub.aclose()
        except Exception as exc:
            log.debug("closing the subscription failed: %s", _describe(exc))

    def _settle_first_attempt(self) -> None:
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)

    def _call_resync(self) -> None:
        if self._resync is None or self._stopping:
            return
        try:
            result = self._resync()
        except Exception:
            log.exception("resync after a broker outage failed")
            return
        if inspect.isawaitable(result):
            # Not awaited here: the catch-up relies on live messages still
            # being delivered (they queue on the devices meanwhile).
            task = asyncio.ensure_future(result)
            self._resync_tasks.add(task)
            task.add_done_callback(self._resync_done)

    def _resync_done(self, task: asyncio.Future) -> None:
        self._resync_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("resync after a broker outage failed", exc_info=task.exception())

    # -- publishing ----------------------------------------------------------

    async def _send_loop(self) -> None:
        delay = self.backoff_min
        while not self._closed:
            # Messages were dropped: tell the others to read what they missed
            # from the store (also the probe that ends a publishing outage).
            dropped = self._dropped
            announce = dropped > self._dropped_announced
            if not self._outbox and not announce:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._idle.clear()
            batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), MAX_BATCH))]
            try:
                await self._send([self._prefix + RESYNC, *batch] if announce else batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the batch is stored, drop it
                self._dropped += len(batch)
                self._link_failed(_PUBLISHING, exc)
                if self._stopping:
                    self._idle.set()  # close() need not wait any longer
                    return
                self._retry_now.clear()
                try:
                    await asyncio.wait_for(self._retry_now.wait(), _jittered(delay))
                except TimeoutError:
                    pass
                delay = min(delay * 2, self.backoff_max)
                continue
            if announce:
                self._dropped_announced = dropped
            delay = self.backoff_min
            self._link_ok(_PUBLISHING)

    async def _send(self, batch: list[bytes]) -> None:
        if len(batch) == 1:
            await self._commands.publish(self.channel, batch[0])
            return
        # One round trip for the batch; the pipeline keeps its order.
        async with self._commands.pipeline(transaction=False) as pipe:
            for payload in batch:
                pipe.publish(self.channel, payload)
            await pipe.execute()

    def _trim_outbox(self) -> None:
        """Drop the oldest queued messages past ``max_pending``; the others
        are told to resync by the next batch."""
        while len(self._outbox) > self.max_pending:
            self._outbox.popleft()
            self._dropped += 1

    async def _heartbeat_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.heartbeat_interval)
            await self.heartbeat()

    # -- outage bookkeeping ----------------------------------------------------

    def _link_failed(self, link: str, exc: BaseException) -> None:
        """Note a failed link; the first failure of an outage is logged once."""
        log.debug("Redis %s failed: %s", link, _describe(exc), extra={"instance": self.instance_id})
        if not self._down:
            self._down_since = asyncio.get_running_loop().time()
            log.warning(
                "Redis broker at %s is unreachable (%s: %s); instance %s serves its own "
                "streams only and keeps retrying",
                redact(self.url),
                link,
                _describe(exc),
                self.instance_id,
                extra={"instance": self.instance_id},
            )
        self._down.add(link)

    def _link_ok(self, link: str) -> None:
        """Note a working link; the outage ends when no link is failing."""
        if link not in self._down:
            return
        self._down.discard(link)
        if not self._down:
            seconds = asyncio.get_running_loop().time() - self._down_since
            dropped = f"; {self._dropped} unsent messages dropped so far" if self._dropped else ""
            log.info(
                "Redis broker at %s is reachable again after %.1f s; instance %s catches its open "
                "streams up from the database%s",
                redact(self.url),
                seconds,
                self.instance_id,
                dropped,
                extra={"instance": self.instance_id},
            )
