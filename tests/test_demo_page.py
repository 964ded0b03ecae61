"""The demo page's files and headers, without a browser.

What a browser would only show as a broken page (a missing module, a file
of the wrong type under ``nosniff``, markup the CSP blocks) is checked here
over plain HTTP; ``test_demo_browser.py`` runs the page itself.
"""

from __future__ import annotations

import html.parser
import pathlib
import re

import pytest

from tests.support.checks import assert_error

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

STATIC = pathlib.Path(__file__).resolve().parent.parent / "static"

#: ES module imports: `import ... from './x.js'` and `import './x.js'`.
IMPORT = re.compile(r"""^\s*import\s+(?:[^'"]*?\sfrom\s+)?['"]([^'"]+)['"]""", re.MULTILINE)
#: Anything that names another origin (scheme-relative `//host` included).
FOREIGN = re.compile(r"""(?:src|href|action)\s*=\s*["']?(?:[a-z]+:)?//|url\(\s*["']?(?:[a-z]+:)?//|from\s+["'](?:[a-z]+:)?//""", re.I)


class References(html.parser.HTMLParser):
    """The URLs an HTML page loads, and anything a strict CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.blocked: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            value = values.get(name)
            if value and not value.startswith(("#", "data:")):
                self.urls.append(value)
        for name in values:
            if name.startswith("on") or name == "style":
                self.blocked.append(f"<{tag} {name}=...>")
        self._in_script = tag == "script"
        if tag == "script" and "src" not in values:
            self.blocked.append("<script> without src")
        if tag == "style":
            self.blocked.append("<style> element")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def page_references() -> References:
    parser = References()
    parser.feed((STATIC / "index.html").read_text("utf-8"))
    return parser


def module_graph() -> set[str]:
    """Every ``/static/...`` path the page loads, following module imports."""
    pending = [url for url in page_references().urls if url.startswith("/")]
    seen: set[str] = set()
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        seen.add(url)
        if url.endswith(".js"):
            source = (STATIC / url.removeprefix("/static/")).read_text("utf-8")
            base = url.rsplit("/", 1)[0]
            for target in IMPORT.findall(source):
                assert target.startswith("./"), f"{url} imports {target}: only relative imports, no CDN"
                pending.append(f"{base}/{target[2:]}")
    return seen


async def test_demo_page_is_served_with_its_security_headers(server):
    status, headers, _, raw = await server.request("GET", "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="/static/app.js">' in raw
    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in (part.strip() for part in headers["Content-Security-Policy"].split(";"))
        if directive
    }
    assert policy["script-src"] == ["'self'"]
    assert "'unsafe-inline'" not in policy.get("style-src", [])
    assert policy["connect-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    # A page opened with ?token= must not pass that URL on in a Referer.
    assert headers["Referrer-Policy"] == "no-referrer"


async def test_every_file_the_page_loads_is_served_with_its_type(server):
    expected = {".js": "text/javascript", ".css": "text/css"}
    paths = module_graph()
    assert {"/static/app.js", "/static/style.css", "/static/notifications-client.js", "/static/session.js"} <= paths
    for path in sorted(paths):
        status, headers, _, raw = await server.request("GET", path)
        assert status == 200, path
        media_type = headers["Content-Type"].split(";")[0]
        assert media_type == expected[pathlib.PurePath(path).suffix], path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert raw == (STATIC / path.removeprefix("/static/")).read_bytes()


def test_the_page_loads_nothing_from_another_origin():
    for file in sorted(STATIC.iterdir()):
        if file.suffix in (".html", ".js", ".css"):
            text = file.read_text("utf-8")
            assert not FOREIGN.search(text), f"{file.name} loads from another origin: {FOREIGN.search(text).group(0)}"


def test_the_page_has_no_markup_the_content_security_policy_blocks():
    assert page_references().blocked == []


async def test_paths_outside_the_static_folder_are_a_json_404(server):
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/missing.js"):
        status, _headers, body, _ = await server.request("GET", path)
        assert status == 404, path
        assert body["error"]["code"] == "not_found", path


async def test_a_range_outside_a_file_is_a_json_416(server):
    # Tornado's own answer was an empty text/plain 416; every error is JSON.
    size = (STATIC / "style.css").stat().st_size
    response = await server.request("GET", "/static/style.css", headers={"Range": f"bytes={size + 10}-"})
    assert_error(response, 416, "range_not_satisfiable")
    assert response[1]["Content-Range"] == f"bytes */{size}"


async def test_a_range_inside_a_file_is_a_206_with_those_bytes(server):
    status, _headers, _, raw = await server.request("GET", "/static/style.css", headers={"Range": "bytes=0-9"})
    assert status == 206
    assert raw == (STATIC / "style.css").read_bytes()[:10]
