"""The bundled demo page and its files (``static/``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import tornado.web

from handlers.call import Deps
from handlers.http import log_failure
from handlers.tornado_door import LimitedRequestHandler, write_json_error

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")

#: The page runs only its own files: no inline script or style (so injected
#: markup cannot run), nothing from another origin, no framing
#: (clickjacking), no <base> or plugins.  ``data:`` images are for the empty
#: favicon that spares a request.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


@contextlib.contextmanager
def _as_not_found() -> Iterator[None]:
    """Tornado answers 403 for paths it refuses; the same 404 as for a
    missing file tells a prober nothing about what lies around the folder.
    A NUL byte (``%00``) makes the file system calls raise ValueError: also
    a 404, not a 500."""
    try:
        yield
    except ValueError:
        raise tornado.web.HTTPError(404, "no such file") from None
    except tornado.web.HTTPError as error:
        if error.status_code != 403:
            raise
        raise tornado.web.HTTPError(404, "no such file") from None


class StaticHandler(LimitedRequestHandler, tornado.web.StaticFileHandler):
    """Files under ``static/``; anything outside it or missing is a JSON 404.

    Request size limits as for the API (a body sent here is refused with a
    JSON error like anywhere else, never with Tornado's bare 400).
    """

    def initialize(
        self,
        path: str,
        default_filename: str | None = None,
        allowed_symlink_directory: str | list[str] | None = None,
        *,
        deps: Deps | None = None,
    ) -> None:
        """The folder, the file for ``/``, where links may lead (Tornado's setting), and the limits from ``deps``."""
        super().initialize(path, default_filename, allowed_symlink_directory)
        self.set_limits(deps.config if deps is not None else None)

    def prepare(self) -> None:
        """Refuse oversized requests before anything else."""
        self.check_limits()

    def set_default_headers(self) -> None:
        """Security headers on every file, and revalidation on every load."""
        # Nobody needs to know which server version runs here.
        self.clear_header("Server")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        # Files are not sniffed into another type (a .js must be JavaScript).
        self.set_header("X-Content-Type-Options", "nosniff")
        # A page opened with ?token= must not hand that URL to the sites its
        # action links lead to.
        self.set_header("Referrer-Policy", "no-referrer")
        # ETag revalidation: an upgraded server never runs a cached, older
        # client module against its newer API.
        self.set_header("Cache-Control", "no-cache")

    def get_content_type(self) -> str:
        """The guessed type, with the charset for text (all files are UTF-8)."""
        content_type = super().get_content_type()
        if content_type.startswith("text/") and "charset" not in content_type:
            content_type += "; charset=utf-8"
        return content_type

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        """The file for ``path``; a path leading outside ``static/`` is a 404."""
        with _as_not_found():
            return super().get_absolute_path(root, path)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        """Tornado's checks; a directory or a link out of ``static/`` is a 404."""
        with _as_not_found():
            return super().validate_absolute_path(root, absolute_path)

    async def get(self, path: str, include_body: bool = True) -> None:
        """The file (or a range of it); a range outside it is a JSON 416."""
        await super().get(path, include_body)
        if self.get_status() == 416:
            # Tornado leaves an empty text/plain body here; every error of
            # the API is JSON (Content-Range, already set, stays).
            self.write_error(416, exc_info=(None, tornado.web.HTTPError(416, "the range is outside the file"), None))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The same JSON error body as the API."""
        write_json_error(self, status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """A missing file or a refused request is an answer, not a failure."""
        log_failure(self.request.method, self.request.path, (typ, value, tb))
