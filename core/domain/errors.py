"""Domain errors raised by ``core`` and mapped to JSON by the handlers.

Each carries the HTTP status and the snake_case code of the contract's error
body, so one ``write_error`` in the base handler serves them all.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client may be told about."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(DomainError):
    """Malformed input: bad JSON, a bad query value."""

    status = 400
    code = "bad_request"


class AuthError(DomainError):
    """No credential, or one that is invalid or expired."""

    status = 401
    code = "unauthorized"


class Forbidden(DomainError):
    """The principal may not act on that resource."""

    status = 403
    code = "forbidden"


class NotFound(DomainError):
    """The resource does not exist, or is not the caller's to see."""

    status = 404
    code = "not_found"


class Conflict(DomainError):
    """The resource already exists."""

    status = 409
    code = "conflict"


class PayloadTooLarge(DomainError):
    """A request body over the configured limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(DomainError):
    """A body that is not ``application/json``."""

    status = 415
    code = "unsupported_media_type"


class RequestHeadersTooLarge(DomainError):
    """A request line plus headers over the configured limit."""

    status = 431
    code = "headers_too_large"


class ValidationError(DomainError):
    """Well-formed input whose fields are invalid."""

    status = 422
    code = "validation_error"


class TooManyRequests(DomainError):
    """A limit was reached (devices per user, publish rate)."""

    status = 429
    code = "too_many_requests"


class Unavailable(DomainError):
    """A dependency (database, broker) is down, or the server is stopping."""

    status = 503
    code = "unavailable"
