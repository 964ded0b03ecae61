"""Configuration: the one home of every setting.

Each flag of ``python server.py`` is declared once in :data:`OPTIONS`; the
same declaration gives its environment variable (``NOTIFY_<FLAG>``), its
default and its help text.  A flag on the command line wins over the
environment, which wins over the default.  No other module reads the
environment.  :data:`DESCRIPTIONS` holds each flag's full meaning, from
which :func:`reference_markdown` renders ``docs/CONFIGURATION.md``
(``python -m core.runtime.config > docs/CONFIGURATION.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A setting has a value the server cannot run with."""


@dataclasses.dataclass
class Config:
    """Every setting of one server process.

    Tests build one directly (``Config(db_url="sqlite:///:memory:", ...)``);
    ``server.py`` builds one from flags with :func:`parse_config`.
    """

    port: int = 8888
    address: str = "127.0.0.1"
    db_url: str = "sqlite:///notifications.db"
    redis_url: str = ""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    keepalive_interval: float = 30.0
    max_devices_per_user: int = 10
    demo: bool = False
    history_days: float = 7.0
    cookie_secure: bool = False
    token_ttl: int = 3600
    max_buffer_kb: int = 256
    max_body_kb: int = 256
    retry_ms: int = 2000
    log_level: str = "info"
    processes: int = 1
    max_header_kb: int = 32
    idle_timeout: float = 75.0
    body_timeout: float = 30.0
    publish_rate: float = 200.0
    publish_burst: int = 0
    write_rate: float = 20.0
    write_burst: int = 0
    cors_origins: str = ""
    redis_namespace: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    max_connections: int = 0
    idempotency_ttl: float = 86400.0


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        # "nan" and "inf" pass float(): neither is a usable limit.
        if not 0 <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text!r}")
        return value

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


#: An origin as browsers send it: scheme, host, optional port; no path.
_ORIGIN = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?\Z")


def parse_origins(text: str) -> tuple[str, ...]:
    """The ``--cors-origins`` list: lowercase origins, or ``("*",)``, or empty.

    :raises argparse.ArgumentTypeError: an entry that is not
        ``http(s)://host[:port]``, or ``*`` mixed with explicit origins.
    """
    origins = tuple(dict.fromkeys(item.strip().lower() for item in text.split(",") if item.strip()))
    if "*" in origins:
        if len(origins) > 1:
            raise argparse.ArgumentTypeError(
                "'*' (any origin, without credentials) cannot be combined with explicit origins"
            )
        return origins
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise argparse.ArgumentTypeError(f"expected http(s)://host[:port] without a path, got {origin!r}")
    return origins


def _origins(text: str) -> str:
    return ",".join(parse_origins(text))


def _db_url(text: str) -> str:
    if not re.match(r"^(sqlite:///.+|postgres(ql)?://.+)$", text):
        raise argparse.ArgumentTypeError(
            "expected sqlite:///path.db, sqlite:///:memory: or postgresql://user@host:port/db"
        )
    return text


def _redis_url(text: str) -> str:
    if text and not re.match(r"^rediss?://", text):
        raise argparse.ArgumentTypeError("expected redis://host:port/db or empty")
    return text


def _namespace(text: str) -> str:
    if text and not re.match(r"^[A-Za-z0-9_.-]{1,64}\Z", text):
        raise argparse.ArgumentTypeError("expected 1..64 letters, digits, '_', '.' or '-'")
    return text


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


#: (flag, type, help).  The attribute name and the environment variable are
#: derived from the flag; the default comes from :class:`Config`.
OPTIONS: Sequence[tuple[str, Any, str]] = (
    ("--port", _positive(int), "TCP port to listen on"),
    ("--address", str, "address to bind"),
    ("--db-url", _db_url, "sqlite:///path.db, sqlite:///:memory: or postgresql://user@host:port/db"),
    ("--redis-url", _redis_url, "redis://host:port/db to run several processes as one service; empty = single process"),
    ("--jwt-secret", str, "HS256 secret for tokens"),
    ("--jwt-public-key", str, "PEM file with an RSA (RS256) or EC (ES256) public key"),
    ("--keepalive-interval", _positive(float), "seconds between ': ping' comments"),
    ("--max-devices-per-user", _positive(int), "open streams one user may hold on this process"),
    ("--demo", bool, "create demo users and use a generated dev secret when none is given"),
    ("--history-days", _positive(float), "days of stream history kept for Last-Event-ID replay"),
    ("--cookie-secure", bool, "mark the access_token cookie Secure (HTTPS deployments)"),
    ("--token-ttl", _positive(int), "lifetime in seconds of tokens issued by login"),
    ("--max-buffer-kb", _positive(int), "unsent KiB a stream may hold before it is dropped as a slow reader"),
    ("--max-body-kb", _positive(int), "largest request body in KiB (413 above)"),
    ("--retry-ms", _positive(int), "reconnect delay suggested to browsers (SSE retry field)"),
    ("--log-level", str, "debug, info, warning or error"),
    ("--processes", _positive(int), "serving processes on this machine, sharing the port (above 1 needs --redis-url)"),
    ("--max-header-kb", _positive(int), "largest request line plus headers in KiB (431 above)"),
    (
        "--idle-timeout",
        _positive(float),
        "seconds a connection may take to send a request's headers, or sit idle between requests",
    ),
    ("--body-timeout", _positive(float), "seconds a client may take to send a request body"),
    (
        "--publish-rate",
        _non_negative(float),
        "notifications and events one principal may publish per second, sustained (0 = no limit)",
    ),
    (
        "--publish-burst",
        _non_negative(int),
        "publishes one principal may make at once above --publish-rate (0 = one second's worth)",
    ),
    (
        "--write-rate",
        _non_negative(float),
        "other writes (stream tickets, read state, deletes) one principal may make per second, sustained (0 = no limit)",
    ),
    (
        "--write-burst",
        _non_negative(int),
        "other writes one principal may make at once above --write-rate (0 = one second's worth)",
    ),
    (
        "--redis-namespace",
        _namespace,
        "a name that keeps this deployment's Redis channel and keys apart from others sharing the same Redis database",
    ),
    ("--jwt-audience", str, "when set, a token must carry this aud claim"),
    ("--jwt-issuer", str, "when set, a token must carry this iss claim"),
    (
        "--max-connections",
        _non_negative(int),
        "open connections (streams included) this process serves at most; more get a quick 503 (0 = the descriptor limit minus a reserve)",
    ),
    (
        "--idempotency-ttl",
        _positive(float),
        "seconds a publish's Idempotency-Key is remembered (a retry within it gets the first answer again)",
    ),
    (
        "--cors-origins",
        _origins,
        "comma-separated origins allowed to call the API from a browser, with credentials; '*' = any origin, without credentials; empty = no CORS",
    ),
)

#: Flag -> what it means in full (Markdown, links relative to ``docs/``).
#: The short help of :data:`OPTIONS` is what ``--help`` prints; this is the
#: meaning column of ``docs/CONFIGURATION.md`` (:func:`reference_markdown`).
DESCRIPTIONS: Mapping[str, str] = {
    "--port": "TCP port",
    "--address": "address to bind",
    "--db-url": "`sqlite:///path.db`, `sqlite:///:memory:` or `postgresql://user@host:port/db`",
    "--redis-url": (
        "empty = one process; `redis://[:password@]host:port/db` (or `rediss://`) = processes sharing it and the "
        "database act as one service. The database number (0 when the URL names none) separates deployments on "
        "one Redis server: their channels and keys never meet (see "
        "[Several deployments on one Redis](DEPLOYMENT.md#several-deployments-on-one-redis)). A malformed URL "
        "stops the start; an unreachable Redis does not: the server starts, `/health` answers 503 with "
        '`"broker": "down"`, and it keeps reconnecting (0.1 s doubling to 5 s)'
    ),
    "--jwt-secret": (
        "HS256 secret (only HS256 is then accepted); prefer `NOTIFY_JWT_SECRET` to the flag, which every local "
        "user can read in the process list"
    ),
    "--jwt-public-key": "PEM file of an RSA (RS256) or EC (ES256) public key",
    "--keepalive-interval": "seconds between `: ping` comments on every open stream",
    "--max-devices-per-user": "open streams per user on one process (429 above)",
    "--demo": "demo users (password `demo`) and, without a key, a generated development secret",
    "--history-days": "how long events stay replayable; an older cursor gets `event: reset`",
    "--cookie-secure": "add `Secure` to the `access_token` cookie (HTTPS)",
    "--token-ttl": "lifetime (s) of tokens issued by login",
    "--max-buffer-kb": (
        "unsent KiB a stream may hold before it is dropped as a slow reader; also the stream socket's kernel "
        "send buffer (`SO_SNDBUF`, at least 16), so a client that stops reading costs at most about 3x this"
    ),
    "--max-body-kb": "largest request body (413 above; see [Limits](LIMITS.md#bodies))",
    "--retry-ms": "reconnect delay suggested to browsers (`retry:`)",
    "--log-level": "`debug`, `info`, `warning`, `error`",
    "--processes": (
        "serving processes on this machine, sharing `--port` (above 1 needs `--redis-url`; see "
        "[One machine, several processes](DEPLOYMENT.md#one-machine-several-processes))"
    ),
    "--max-header-kb": "largest request line plus headers (431 above; see [Limits](LIMITS.md#headers))",
    "--idle-timeout": (
        "seconds a connection may take to send a request's headers, or stay idle between requests; never "
        "applies to an open stream"
    ),
    "--body-timeout": "seconds a client may take to send a request body",
    "--publish-rate": (
        "notifications and events one principal (token subject) may publish per second, sustained; 429 with "
        "`Retry-After` above; `0` = no limit"
    ),
    "--publish-burst": (
        "publishes one principal may make at once on top of the rate; `0` = one second's worth of "
        "`--publish-rate` (at least 1)"
    ),
    "--write-rate": (
        "other writes (stream tickets, marking read, read-all, deletes) one principal may make per second, "
        "sustained; 429 with `Retry-After` above; `0` = no limit"
    ),
    "--write-burst": (
        "other writes one principal may make at once on top of the rate; `0` = one second's worth of "
        "`--write-rate` (at least 1)"
    ),
    "--redis-namespace": (
        "1 to 64 letters, digits, `_`, `.` or `-`: separates deployments that share one Redis database "
        "(processes with the same URL and namespace are one service; any other namespace, empty included, "
        "never sees their events, keys or instances)"
    ),
    "--jwt-audience": (
        "when set, a token's `aud` (a string, or a list of them) must name this value, and the tokens this "
        "server issues carry it; when empty, a token with an `aud` is refused"
    ),
    "--jwt-issuer": "when set, a token's `iss` must be this value, and the tokens this server issues carry it",
    "--max-connections": (
        "open connections one process serves, event streams included; past it a new connection gets a quick "
        "503 `too_many_connections` with `Retry-After: 1` and is closed. `0` = automatic: the process's "
        "descriptor limit (`ulimit -n`) minus a reserve of 5% (at least 64) for the database, Redis and the "
        "listeners"
    ),
    "--idempotency-ttl": (
        "seconds an `Idempotency-Key` of `POST .../notifications` or `POST /api/v1/events` is remembered per "
        "principal: a retry with the same key within it gets the first answer again (`Idempotent-Replayed: "
        "true`) and stores nothing; kept in the database, so across restarts and processes"
    ),
    "--cors-origins": (
        "comma-separated origins (`https://app.example,http://localhost:3000`) whose pages may call the API "
        "and open streams with credentials; `*` = any origin, without credentials; empty = no CORS headers "
        "(see [CORS](API.md#cors))"
    ),
}


def _attr(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def env_name(flag: str) -> str:
    """The environment variable that feeds ``flag``: ``--db-url`` -> ``NOTIFY_DB_URL``."""
    return "NOTIFY_" + _attr(flag).upper()


def add_options(parser: argparse.ArgumentParser) -> None:
    """Declare every server flag on ``parser`` (defaults are applied later)."""
    defaults = Config()
    for flag, kind, help_text in OPTIONS:
        default = getattr(defaults, _attr(flag))
        text = f"{help_text} (env {env_name(flag)}; default {default!r})"
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, metavar=_attr(flag).upper(), help=text)


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Merge parsed flags over ``NOTIFY_*`` environment variables over defaults.

    :raises ConfigError: when an environment variable holds a bad value.
    """
    config = Config()
    for flag, kind, _help in OPTIONS:
        name = _attr(flag)
        value = getattr(args, name, None)
        if value is None and env_name(flag) in environ:
            raw = environ[env_name(flag)]
            try:
                value = _boolean(raw) if kind is bool else kind(raw)
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{env_name(flag)}: {exc}") from None
            except ValueError:
                # Worded as argparse words a bad flag ("invalid positive int
                # value: 'abc'"), not as int() does ("invalid literal for...").
                kind_name = getattr(kind, "__name__", "")
                raise ConfigError(f"{env_name(flag)}: invalid {kind_name} value: {raw!r}") from None
        if value is not None:
            setattr(config, name, value)
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: expected debug, info, warning or error, got {config.log_level!r}")
    return config


#: Where :func:`reference_markdown`'s output lives, from the repository root.
REFERENCE_PATH = "docs/CONFIGURATION.md"

_REFERENCE_HEAD = """\
# Configuration

<!-- Generated from core/runtime/config.py by `python -m core.runtime.config > docs/CONFIGURATION.md`.
     Edit the descriptions there (DESCRIPTIONS), not this file: tests/test_config.py compares the two. -->

Every setting of `server.py` is a flag and an environment variable: `NOTIFY_`
and the flag's name in capitals, `-` written `_` (`--db-url` is
`NOTIFY_DB_URL`). A flag on the command line wins over the environment, which
wins over the default. A switch (`--demo`, `--cookie-secure`) takes no value
as a flag; as an environment variable it takes `true` or `false` (also `1`/`0`,
`yes`/`no`, `on`/`off`; empty is false). A bad value, from either, stops the
start with a usage error naming the setting. `python server.py --help` lists
the same flags in short.

| flag | environment | default | meaning |
|---|---|---|---|
"""


def _shown_default(value: Any) -> str:
    """A default as the reference table shows it: ``off``, ``empty``, or the value in code."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "empty"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def reference_markdown() -> str:
    """The configuration reference: every flag of :data:`OPTIONS` as a Markdown table.

    One row per flag, in declaration order: the flag, its environment
    variable, its default (from :class:`Config`) and its meaning (from
    :data:`DESCRIPTIONS`, or the short help when a flag has none).  This is
    the whole text of ``docs/CONFIGURATION.md``; regenerate that file with
    ``python -m core.runtime.config > docs/CONFIGURATION.md``.
    """
    defaults = Config()
    rows = []
    for flag, _kind, help_text in OPTIONS:
        meaning = DESCRIPTIONS.get(flag, help_text).replace("|", "\\|")
        default = _shown_default(getattr(defaults, _attr(flag)))
        rows.append(f"| `{flag}` | `{env_name(flag)}` | {default} | {meaning} |\n")
    return _REFERENCE_HEAD + "".join(rows)


if __name__ == "__main__":
    import sys

    sys.stdout.write(reference_markdown())
