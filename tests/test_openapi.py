"""The OpenAPI document: valid OpenAPI 3.1, complete, and served as JSON.

``docs/openapi.yaml`` is written by hand, so these tests hold it to the
application: every route the app registers (walked from its router, with
the methods its handler implements) is described, nothing else is, and
the document served at ``GET /api/v1/openapi.json`` is that file.
``tests/test_api_fuzz.py`` then checks the server's answers against it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tornado.routing
import tornado.web
import yaml
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.support.processes import ROOT

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

OPENAPI = Path(ROOT) / "docs" / "openapi.yaml"
DOCUMENT_PATH = "/api/v1/openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def load_document() -> dict:
    """The YAML file, as the JSON the server serves would parse."""
    return json.loads(json.dumps(yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))))


def described_operations(document: dict) -> dict[str, set[str]]:
    """``path template with %s for each parameter -> {METHOD, ...}`` of the document."""
    described = {}
    for path, item in document["paths"].items():
        template = re.sub(r"\{[^}]+\}", "%s", path)
        described[template] = {method.upper() for method in item if method in METHODS}
    return described


def registered_routes(app: tornado.web.Application) -> dict[str, set[str]]:
    """``path template -> {METHOD, ...}`` of every rule the application routes.

    The template is Tornado's own reversal of the rule's regex, with ``%s``
    for each group; a group that can only match nothing (``/()``, the demo
    page) is the empty string.  The methods are those the route table names
    for the path (or, for the demo's files, those the handler class
    implements); the rest are answered 405.
    """
    routes = {}
    for rule in app.wildcard_router.rules:
        matcher = rule.matcher
        assert isinstance(matcher, tornado.routing.PathMatches), rule
        assert matcher._path is not None, f"{matcher.regex.pattern} cannot be reversed to a path"
        groups = re.findall(r"\([^()]*\)", matcher.regex.pattern)
        template = matcher._path % tuple("" if group == "()" else "%s" for group in groups)
        handler = rule.target
        route = (rule.target_kwargs or {}).get("route")
        if route is not None:
            # A route of handlers/routes.py: the methods its table names.
            implemented = set(route.allowed)
        else:
            implemented = {
                method
                for method in handler.SUPPORTED_METHODS
                if getattr(handler, method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())
            }
        routes[template] = implemented
    return routes


def test_the_document_is_valid_openapi_3_1():
    document = load_document()
    assert document["openapi"].startswith("3.1.")
    errors = [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_every_route_the_app_registers_is_described_with_its_methods(server):
    described = described_operations(load_document())
    registered = registered_routes(server.app)
    assert registered, "no routes found"
    missing = {path: methods - described.get(path, set()) for path, methods in registered.items()}
    assert {path: methods for path, methods in missing.items() if methods} == {}


def test_the_document_describes_no_route_or_method_the_app_lacks(server):
    described = described_operations(load_document())
    registered = registered_routes(server.app)
    extra = {path: methods - registered.get(path, set()) for path, methods in described.items()}
    assert {path: methods for path, methods in extra.items() if methods} == {}


def test_every_operation_that_reads_a_credential_documents_401():
    document = load_document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS and operation.get("security", document.get("security")):
                # ``- {}`` makes the credential optional; 401 is still possible.
                assert "401" in operation["responses"], f"{method.upper()} {path}"


def test_every_documented_json_error_uses_the_error_schema():
    document = load_document()
    components = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS or method == "head":
                continue
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")) or path in ("/health",):
                    continue
                ref = response.get("$ref")
                resolved = components[ref.rsplit("/", 1)[1]] if ref else response
                schema = resolved["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, f"{method.upper()} {path} {status}"


async def test_the_document_is_served_as_json_without_a_credential(server):
    status, headers, body, raw = await server.request("GET", DOCUMENT_PATH)
    assert status == 200, raw
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == load_document()


async def test_the_served_document_names_its_own_path(server):
    _, _, body, _ = await server.request("GET", DOCUMENT_PATH)
    assert "get" in body["paths"][DOCUMENT_PATH]
