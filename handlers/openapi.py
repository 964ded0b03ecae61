"""The API's OpenAPI 3.1 description, as served at ``GET /api/v1/openapi.json``.

The description is written by hand in ``docs/openapi.yaml`` (YAML reads
better in review); this serves the same document converted to JSON, which
is what tools such as Swagger UI or code generators fetch.
"""

from __future__ import annotations

import functools
import json
import os

import yaml

#: The hand-written description, beside the other documentation.
OPENAPI_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "openapi.yaml")


@functools.lru_cache(maxsize=1)
def openapi_json() -> bytes:
    """``docs/openapi.yaml`` as compact UTF-8 JSON, read once per process.

    ``safe_load`` builds only plain data (no Python objects from tags), and
    a round trip through JSON is the check that nothing YAML-only (dates,
    non-string keys) slipped into the document.
    """
    with open(OPENAPI_PATH, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
