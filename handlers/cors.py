"""Cross-origin resource sharing: which browser origins may call the API.

Pure policy, no I/O: the handlers ask it for the headers of a response.
Only origins listed in ``--cors-origins`` are answered, each by name and
with credentials (cookies, ``EventSource({withCredentials: true})``).  A
listed ``*`` allows any origin but never with credentials: browsers refuse
that combination, and reflecting any origin with credentials would let
every web page act as the logged-in user.  An empty list sends no CORS
headers at all, so browsers keep the same-origin policy.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Request headers a cross-origin caller may send.
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, X-Connection-Id"
#: Response headers cross-origin scripts may read besides the simple ones.
EXPOSE_HEADERS = "Location, Retry-After"
#: Seconds a browser may cache a preflight answer (Chrome caps it at 7200).
MAX_AGE = 600


class CorsPolicy:
    """The allow-list and the headers it gives.

    :param origins: lowercase ``scheme://host[:port]`` entries, or ``["*"]``,
        or nothing (CORS off); see :func:`core.runtime.config.parse_origins`.
    """

    def __init__(self, origins: Iterable[str] = ()) -> None:
        origins = tuple(origins)
        self.any_origin = origins == ("*",)
        self.origins = frozenset(() if self.any_origin else origins)

    @property
    def enabled(self) -> bool:
        """Whether any cross-origin caller is allowed."""
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        """Whether a request's ``Origin`` is allowed."""
        if not origin or not self.enabled:
            return False
        return self.any_origin or origin.strip().lower() in self.origins

    def lists(self, origin: str | None) -> bool:
        """Whether ``origin`` is named in the list (``*`` names none).

        What a write made with the cookie alone needs: ``*`` lets any page
        call the API without credentials, never act with the user's cookie.
        """
        if not origin:
            return False
        return origin.strip().lower() in self.origins

    def headers(self, origin: str | None) -> dict[str, str]:
        """Headers for any response to a request with this ``Origin``.

        ``Vary: Origin`` goes on every response once origins are listed,
        because the answer then depends on who asks (a shared cache must
        not hand one origin's answer to another).
        """
        if not self.enabled:
            return {}
        if self.any_origin:
            return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSE_HEADERS}
        if not origin or not self.allows(origin):
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": origin.strip(),
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": EXPOSE_HEADERS,
            "Vary": "Origin",
        }

    def preflight_headers(self, origin: str | None, methods: Iterable[str]) -> dict[str, str]:
        """Extra headers of the answer to an allowed origin's preflight ``OPTIONS``."""
        if not self.allows(origin):
            return {}
        return {
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE),
        }
