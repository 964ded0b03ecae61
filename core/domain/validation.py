"""Checking request bodies and query values; wire-format helpers.

Malformed input raises :class:`~core.domain.errors.BadRequest` (400); well-formed
input with invalid fields raises :class:`~core.domain.errors.ValidationError` (422).
Unknown body fields are ignored, so clients may send more than we read.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from core.domain.errors import BadRequest, ValidationError

NOTIFICATION_TYPES = ("info", "success", "warning", "error")
MAX_MESSAGE = 2000
MAX_DATA_BYTES = 8 * 1024
MAX_URL = 2048
MAX_EVENT_USERS = 1000
MAX_USER_ID = 128
#: Levels of objects and arrays in a ``data`` object, itself the first.
MAX_DATA_DEPTH = 32
#: Levels of objects and arrays anywhere in a request body, itself the
#: first: room for a ``data`` at :data:`MAX_DATA_DEPTH` in any body, and
#: far below what the JSON codec can follow (about 1,000 levels of
#: recursion, less what the call stack already holds).
MAX_BODY_DEPTH = 2 * MAX_DATA_DEPTH

# \Z, not $: Python's $ also matches before a trailing newline, which would
# let "name\n" through.
SOURCE_TYPE = re.compile(r"^[A-Z0-9_]{1,64}\Z")
EVENT_NAME = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,63}\Z")
#: No control characters, no '/', and no lone surrogates (which no UTF-8
#: database column or response can hold; a JWT's claims may contain them).
USER_ID = re.compile(r"^[^\x00-\x1f\x7f/\ud800-\udfff]{1,128}\Z")
#: Names the product itself sends on the stream; nobody may publish them.
RESERVED_EVENTS = frozenset({"message", "ready", "reset", "token-expired", "notification-read", "notification-deleted"})
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def compact_json(value: Any) -> str:
    """One line of JSON, no spaces: what ``data:`` carries."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Encoded(dict):
    """A JSON object that also carries its :func:`compact_json` text.

    A new notification's wire form is both the response and the stream
    event's data: it is encoded once, and the response reuses the text.
    The caller must not change the dict afterwards.
    """

    __slots__ = ("text",)

    def __init__(self, value: dict[str, Any]) -> None:
        super().__init__(value)
        self.text = compact_json(value)


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with a trailing ``Z``."""
    if ms is None:
        return None
    seconds, millis = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels deep.

    ``value`` itself is the first level when it is an object or an array.
    One level at a time, without recursion: the point is to refuse, before
    anything encodes or walks it recursively, a value nested deep enough to
    exhaust Python's recursion limit (a ``RecursionError``, a 500).
    """
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, (dict, list)):
                    below.append(child)
        level = below
    return False


def _too_deep(what: str, limit: int) -> ValidationError:
    return ValidationError(f"{what} must not nest objects and arrays more than {limit} levels deep")


def parse_json_body(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object.

    :raises BadRequest: invalid UTF-8 or invalid JSON.
    :raises ValidationError: valid JSON that is not an object, or that
        nests deeper than :data:`MAX_BODY_DEPTH` levels.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid UTF-8", code="invalid_encoding") from None
    try:
        value = json.loads(text)
    except RecursionError:
        # Nested deeper than the parser can follow, so far past the limit
        # (whether or not the rest of it is well-formed).
        raise _too_deep("the body", MAX_BODY_DEPTH) from None
    except ValueError:
        raise BadRequest("the body is not valid JSON", code="invalid_json") from None
    # Each "[" or "{" opens at most one level: the usual body has too few
    # of them to need the walk.
    if text.count("[") + text.count("{") > MAX_BODY_DEPTH and deeper_than(value, MAX_BODY_DEPTH):
        raise _too_deep("the body", MAX_BODY_DEPTH)
    # A "\ud800" escape decodes to a lone surrogate, which no UTF-8
    # response or database can hold: refuse it here, not with a 500 later.
    if "\\u" in text:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except ValueError:  # UnicodeEncodeError
            raise BadRequest("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ValidationError("the body must be a JSON object")
    return value


def _data_object(body: Mapping[str, Any], required: bool = False) -> dict[str, Any] | None:
    if "data" not in body or body["data"] is None:
        if required:
            return {}
        return None
    data = body["data"]
    if not isinstance(data, dict):
        raise ValidationError("data must be a JSON object")
    # Before it is encoded: the encoder recurses once per level.
    if deeper_than(data, MAX_DATA_DEPTH):
        raise _too_deep("data", MAX_DATA_DEPTH)
    if len(compact_json(data).encode("utf-8")) > MAX_DATA_BYTES:
        raise ValidationError(f"data must be at most {MAX_DATA_BYTES} bytes of JSON")
    return data


def validate_action_url(value: Any) -> str | None:
    """A path starting with exactly one ``/``, or an absolute http(s) URL.

    Refuses ``javascript:``, protocol-relative ``//host``, backslash tricks
    (browsers read ``/\\host`` as ``//host``) and control characters, so a
    link in a toast can never run script or leave for an unexpected host by
    a trick.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise ValidationError(f"actionUrl must be a string of 1..{MAX_URL} characters")
    if _CONTROL.search(value) or "\\" in value:
        raise ValidationError("actionUrl must not contain spaces, control characters or backslashes")
    if value.startswith("/"):
        if value.startswith("//"):
            raise ValidationError("actionUrl must be a path starting with one '/' or an http(s) URL")
        return value
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # validates it: ValueError outside 0..65535
    except ValueError:
        # Also a broken "[IPv6" host: a client's bad URL, never a 500.
        raise ValidationError("actionUrl is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or not parts.hostname:
        raise ValidationError("actionUrl must be a path starting with one '/' or an http(s) URL")
    return value


def validate_notification(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``POST .../notifications``, checked.

    :returns: ``type``, ``message``, ``action_url``, ``source_type``, ``data``.
    """
    kind = body.get("type")
    if kind not in NOTIFICATION_TYPES:
        raise ValidationError("type must be one of " + ", ".join(NOTIFICATION_TYPES))
    message = body.get("message")
    if not isinstance(message, str) or not 1 <= len(message) <= MAX_MESSAGE:
        raise ValidationError(f"message must be a string of 1..{MAX_MESSAGE} characters")
    source_type = body.get("sourceType")
    if source_type is not None and (not isinstance(source_type, str) or not SOURCE_TYPE.match(source_type)):
        raise ValidationError("sourceType must match [A-Z0-9_]{1,64}")
    return {
        "type": kind,
        "message": message,
        "action_url": validate_action_url(body.get("actionUrl")),
        "source_type": source_type,
        "data": _data_object(body),
    }


def validate_event(body: Mapping[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
    """The fields of ``POST /api/v1/events``: name, distinct user ids in order, data."""
    name = body.get("event")
    if not isinstance(name, str) or not EVENT_NAME.match(name):
        raise ValidationError("event must match ^[a-z0-9][a-z0-9._:-]{0,63}$")
    if name in RESERVED_EVENTS:
        raise BadRequest(f"the event name {name!r} is reserved", code="reserved_event")
    user_ids = body.get("userIds")
    if not isinstance(user_ids, list) or not 1 <= len(user_ids) <= MAX_EVENT_USERS:
        raise ValidationError(f"userIds must be a list of 1..{MAX_EVENT_USERS} user ids")
    for user_id in user_ids:
        if not isinstance(user_id, str) or not USER_ID.match(user_id):
            raise ValidationError("every userIds entry must be a user id string of 1..128 characters")
    data = _data_object(body, required=True)
    return name, list(dict.fromkeys(user_ids)), data or {}


def validate_read_flag(body: Mapping[str, Any]) -> bool:
    """The ``read`` field of ``PATCH``: must be a boolean."""
    read = body.get("read")
    if not isinstance(read, bool):
        raise ValidationError("read must be true or false")
    return read


def parse_limit(raw: str | None, default: int = 20) -> int:
    """``limit`` query value: an integer 1..100."""
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,3}", raw) or not 1 <= int(raw) <= 100:
        raise BadRequest("limit must be an integer from 1 to 100", code="invalid_query")
    return int(raw)


def parse_bool(name: str, raw: str | None) -> bool:
    """A ``true``/``false`` query value (absent = false)."""
    if raw is None:
        return False
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false", code="invalid_query")


def parse_cursor(raw: str | None) -> int | None:
    """A Last-Event-ID: a non-negative decimal integer, else treated as absent."""
    if raw is None:
        return None
    raw = raw.strip()
    if not re.fullmatch(r"\d{1,18}", raw):
        return None
    return int(raw)


def check_user_id(user_id: str) -> str:
    """A user id from a path or a form."""
    if not USER_ID.match(user_id):
        raise ValidationError("user ids are 1..128 characters without '/' or control characters")
    return user_id
