"""No credential ever shows in a log line or an answer: a scanner for a whole test run.

The contract says query-string credentials never appear in any log line, and
the project's rule is wider: no token, ticket, password or signing secret in
any log, ever.  A handful of targeted tests cannot prove that for every code
path, so the whole suite doubles as the probe:

* every credential the tests make or see is *noted*: the ``--jwt-secret``
  of every :class:`core.domain.auth.TokenService` built, every JWT issued
  (``TokenService.issue``, ``jwt.encode``) or sent by the test helpers
  (``Authorization: Bearer``, the ``access_token`` cookie, ``?token=``),
  every stream ticket handed out, every password an account is created or
  a login is attempted with, and the token and ticket of every answer;
* every text where one must never be is *scanned*: each log record of the
  process (message and traceback; the ``notify`` and ``tornado`` loggers
  are lowered to DEBUG for the run, so the access line of every request is
  among them), every error body and every ``/metrics``, stats and health
  body the test helpers receive, and the stderr of server subprocesses
  where the tests keep it.

A text is scanned when it is produced, against the credentials noted so
far; that is complete, since a credential exists (and is noted) before
anything can log it.  ``tests/conftest.py`` turns each finding into a
failure of the test that caused it.

For a JWT, only its signature is the secret: header and claims are base64
of public facts, and without the signature they authenticate nothing.
Values shorter than :data:`MIN_LENGTH` are not noted (the demo password
``demo`` is a word of ordinary log lines, and public anyway).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

#: Shorter values are not noted as secrets: they would match ordinary text.
MIN_LENGTH = 8
#: Characters of a secret looked up at each position of a scanned text.
_ANCHOR = MIN_LENGTH
#: A compact JWS: three base64url segments.
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.([A-Za-z0-9_-]*)\Z")
#: Loggers lowered to DEBUG while watching, so that every line they could
#: write is written and scanned.
WATCHED_LOGGERS = ("notify", "tornado")
#: Paths whose successful answers are scanned too (they are public).
_PUBLIC_PATHS = ("/metrics", "/api/v1/stats", "/health")


@dataclasses.dataclass(frozen=True)
class Leak:
    """A credential found where it must not be.

    :ivar kind: what it is (``jwt signature``, ``stream ticket``, ``password``...).
    :ivar where: where it was seen (a logger, an error body, a log file).
    :ivar excerpt: the text around it, with the credential masked.
    """

    kind: str
    where: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}: {self.excerpt}"


class LeakScanner:
    """Remembers credentials and finds them in texts.

    Each credential is filed under its first :data:`MIN_LENGTH` characters,
    so scanning a text costs one dictionary lookup per position however many
    credentials a run has made (thousands), instead of one search per
    credential.

    :ivar leaks: every finding so far, in order.
    :ivar reported: how many of :attr:`leaks` a test has already failed for.
    :ivar scanned: how many texts were scanned (lets a test see the wiring work).
    """

    def __init__(self) -> None:
        self._by_anchor: dict[str, dict[str, str]] = {}
        self._count = 0
        self.leaks: list[Leak] = []
        self.reported = 0
        self.scanned = 0

    @property
    def secret_count(self) -> int:
        """How many distinct credentials are noted."""
        return self._count

    def knows(self, value: str) -> bool:
        """Whether ``value`` is noted as a credential."""
        return value in self._by_anchor.get(value[:_ANCHOR], {})

    def add_secret(self, value: Any, kind: str) -> None:
        """Note ``value`` (a str) as a credential; too short or not a str: ignored."""
        if not isinstance(value, str) or len(value) < MIN_LENGTH:
            return
        bucket = self._by_anchor.setdefault(value[:_ANCHOR], {})
        if value not in bucket:
            bucket[value] = kind
            self._count += 1

    def add_token(self, token: Any, kind: str = "jwt signature") -> None:
        """Note a bearer credential: a JWT's signature, or any other value whole."""
        if not isinstance(token, str):
            return
        match = _JWT.match(token)
        if match is not None:
            self.add_secret(match.group(1), kind)
        else:
            self.add_secret(token, "bearer credential")

    def scan(self, text: Any, where: str) -> list[Leak]:
        """Look for every noted credential in ``text``; findings are also kept in :attr:`leaks`."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        if not isinstance(text, str):
            return []
        self.scanned += 1
        found: list[Leak] = []
        anchors = self._by_anchor
        if not anchors or len(text) < _ANCHOR:
            return found
        get = anchors.get
        for position in range(len(text) - _ANCHOR + 1):
            bucket = get(text[position : position + _ANCHOR])
            if bucket is None:
                continue
            for secret, kind in bucket.items():
                if text.startswith(secret, position):
                    found.append(Leak(kind, where, _excerpt(text, position, len(secret))))
        self.leaks.extend(found)
        return found


def _excerpt(text: str, start: int, length: int, context: int = 60) -> str:
    """The text around a finding, with the credential itself masked."""
    before = text[max(0, start - context) : start]
    after = text[start + length : start + length + context]
    return repr(f"{before}<{length} chars hidden>{after}")


def report(found: Iterable[Leak]) -> str:
    """A failure message listing the findings."""
    lines = [str(leak) for leak in found]
    return f"{len(lines)} credential(s) leaked:\n" + "\n".join(lines)


class LeakLogHandler(logging.Handler):
    """Scans every log record: its message, and its traceback if it has one."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        """Scan ``record`` with the scanner watching now."""
        scanner = current()
        if scanner is None:
            return
        try:
            parts = [record.getMessage()]
        except Exception:  # a broken format string is the caller's bug, not a leak
            parts = [str(record.msg), repr(record.args)]
        # exc_text is the traceback as another handler already formatted it.
        if record.exc_text:
            parts.append(record.exc_text)
        elif record.exc_info:
            parts.append(self._formatter.formatException(record.exc_info))
        if record.stack_info:
            parts.append(record.stack_info)
        scanner.scan("\n".join(parts), f"log record {record.name} {record.levelname}")


# -- the scanner watching now, and what feeds it ----------------------------------

_watching: list[LeakScanner] = []
_undo: list[Any] = []


def current() -> LeakScanner | None:
    """The scanner that receives what is noted and observed now (the innermost one)."""
    return _watching[-1] if _watching else None


@contextlib.contextmanager
def watching(scanner: LeakScanner) -> Iterator[LeakScanner]:
    """Feed ``scanner`` everything noted and observed until the block ends.

    The outermost call installs the hooks (a log handler on the root logger,
    DEBUG on :data:`WATCHED_LOGGERS`, wrappers around what makes
    credentials); a nested call only redirects to its scanner, so a test can
    plant a leak in a scanner of its own without failing the run's.
    """
    if not _watching:
        _install()
    _watching.append(scanner)
    try:
        yield scanner
    finally:
        _watching.remove(scanner)
        if not _watching:
            _uninstall()


def _install() -> None:
    import jwt

    from core.domain.auth import TokenService
    from core.domain.service import NotificationService

    handler = LeakLogHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    _undo.append(lambda: root.removeHandler(handler))
    for name in WATCHED_LOGGERS:
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.DEBUG)
        _undo.append(lambda logger=logger, level=level: logger.setLevel(level))

    def wrap(owner: Any, name: str, make: Any) -> None:
        original = getattr(owner, name)
        setattr(owner, name, make(original))
        _undo.append(lambda: setattr(owner, name, original))

    def token_service_init(original):
        def __init__(self, secret: str = "", *args: Any, **kwargs: Any) -> None:
            note_secret(secret, "jwt secret")
            original(self, secret, *args, **kwargs)

        return __init__

    def issue(original):
        def issue(self, *args: Any, **kwargs: Any) -> str:
            token = original(self, *args, **kwargs)
            note_token(token)
            return token

        return issue

    def encode(original):
        def encode(payload: Any, key: Any, *args: Any, **kwargs: Any) -> str:
            token = original(payload, key, *args, **kwargs)
            note_token(token)
            if isinstance(key, (str, bytes)) and not _looks_public(key):
                note_secret(key.decode("utf-8", "replace") if isinstance(key, bytes) else key, "jwt secret")
            return token

        return encode

    def issue_ticket(original):
        async def issue_ticket(self, *args: Any, **kwargs: Any) -> dict:
            result = await original(self, *args, **kwargs)
            note_secret(result.get("ticket"), "stream ticket")
            return result

        return issue_ticket

    def create_user(original):
        async def create_user(self, user_id: str, password: str, *args: Any, **kwargs: Any) -> None:
            note_secret(password, "password")
            return await original(self, user_id, password, *args, **kwargs)

        return create_user

    def login(original):
        async def login(self, user_id: str, password: str, *args: Any, **kwargs: Any) -> dict:
            # Wrong passwords too: a failed login must not log what was tried.
            note_secret(password, "password")
            return await original(self, user_id, password, *args, **kwargs)

        return login

    wrap(TokenService, "__init__", token_service_init)
    wrap(TokenService, "issue", issue)
    wrap(jwt, "encode", encode)
    wrap(NotificationService, "issue_ticket", issue_ticket)
    wrap(NotificationService, "create_user", create_user)
    wrap(NotificationService, "login", login)


def _looks_public(key: str | bytes) -> bool:
    """A PEM key given to ``jwt.encode`` is a private key object, never a str;
    a PEM string there would be a public key in a confusion test."""
    return (b"-----BEGIN" if isinstance(key, bytes) else "-----BEGIN") in key


def _uninstall() -> None:
    while _undo:
        _undo.pop()()


def note_secret(value: Any, kind: str) -> None:
    """Note a credential with the scanner watching now (no-op outside a run)."""
    scanner = current()
    if scanner is not None:
        scanner.add_secret(value, kind)


def note_token(token: Any) -> None:
    """Note a bearer token (see :meth:`LeakScanner.add_token`)."""
    scanner = current()
    if scanner is not None:
        scanner.add_token(token)


def note_argv(args: Iterable[str], env: Mapping[str, str] | None = None) -> None:
    """Note the values of ``--jwt-secret`` and ``--password`` on a command line
    (and ``NOTIFY_JWT_SECRET`` in its environment)."""
    args = list(args)
    note_secret((env or {}).get("NOTIFY_JWT_SECRET"), "jwt secret")
    for flag, kind in (("--jwt-secret", "jwt secret"), ("--password", "password")):
        for index, arg in enumerate(args):
            if arg == flag and index + 1 < len(args):
                note_secret(args[index + 1], kind)
            elif arg.startswith(flag + "="):
                note_secret(arg.split("=", 1)[1], kind)


def observe(text: Any, where: str) -> None:
    """Scan a text that must hold no credential (no-op outside a run)."""
    scanner = current()
    if scanner is not None:
        scanner.scan(text, where)


def observe_file(path: Any, where: str | None = None) -> None:
    """Scan a log file (a server subprocess's stderr), if it exists."""
    scanner = current()
    if scanner is None:
        return
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return
    scanner.scan(text, where or f"log file {path}")


def observe_exchange(method: str, path: str, headers: Mapping[str, str] | None, body: Any, status: int, raw: bytes) -> None:
    """What a test helper sent and received in one request.

    Notes the credentials sent (bearer token, cookie, ``?token=``,
    ``?ticket=``, a login's password) and those an answer hands out
    (``token``, ``ticket``); scans the body of every error answer and of the
    public monitoring endpoints.
    """
    scanner = current()
    if scanner is None:
        return
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if lowered == "authorization":
            scheme, _, credential = str(value).strip().partition(" ")
            if scheme.lower() == "bearer":
                scanner.add_token(credential.strip())
        elif lowered == "cookie":
            for part in str(value).split(";"):
                cookie_name, _, cookie_value = part.strip().partition("=")
                if cookie_name == "access_token":
                    scanner.add_token(cookie_value)
    bare_path, _, query = path.partition("?")
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name == "token":
            scanner.add_token(value)
        elif name == "ticket":
            scanner.add_secret(value, "stream ticket")
    if isinstance(body, dict) and bare_path.endswith("/auth/login"):
        scanner.add_secret(body.get("password"), "password")
    if status < 400:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            answer = json.loads(raw) if raw.strip() else None
            if isinstance(answer, dict):
                scanner.add_token(answer.get("token"))
                scanner.add_secret(answer.get("ticket"), "stream ticket")
    if status >= 400:
        scanner.scan(raw, f"error body {status} {method} {bare_path}")
    elif bare_path.startswith(_PUBLIC_PATHS):
        scanner.scan(raw, f"answer of {method} {bare_path}")
