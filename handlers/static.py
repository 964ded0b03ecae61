"""The bundled demo page and its files (``static/``)."""

from __future__ import annotations

import os
from typing import Any

import tornado.web

from handlers.base import BaseHandler

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")


class StaticHandler(tornado.web.StaticFileHandler):
    """Files under ``static/``; anything outside it or missing is a JSON 404."""

    def set_default_headers(self) -> None:
        """Files are not sniffed into another type."""
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The same JSON error body as the API."""
        BaseHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """A missing file is an answer, not a failure."""
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        super().log_exception(typ, value, tb)
