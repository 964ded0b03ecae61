"""The direction of the product's imports, read from the code itself.

``core/__init__.py`` states it: ``core.runtime`` may use every other core
package, ``core.streams`` uses ``core.domain`` and ``core.transport``,
``core.domain`` uses ``core.fanout``, and ``core.fanout`` and
``core.transport`` use nothing else of the product; nothing in ``core``
imports ``handlers`` or ``server``; ``models`` is reached only through
``core.domain.service`` (and by ``server.py``, which builds everything);
``handlers`` never import ``models`` or ``server``.  Each test reads every
module's imports (``import x`` and ``from x import y``, at any depth of the
file) with :mod:`ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each core package may import besides itself.
CORE_ALLOWED = {
    "core.runtime": {"core.streams", "core.domain", "core.fanout", "core.transport"},
    "core.streams": {"core.domain", "core.transport"},
    "core.domain": {"core.fanout"},
    "core.fanout": set(),
    "core.transport": set(),
}


def module_name(path: Path) -> str:
    """``core/domain/auth.py`` -> ``core.domain.auth``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    """Every module of the product (not tests, not bench)."""
    modules = {"server": ROOT / "server.py"}
    for package in ("core", "handlers", "models"):
        for path in (ROOT / package).rglob("*.py"):
            modules[module_name(path)] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """The product modules ``path`` imports (absolute names, first-party only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from core.domain import ids``: the submodule is what is used.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("core", "handlers", "models", "server")}


def package_of(name: str) -> str:
    """The room a module lives in: ``core.domain.auth`` -> ``core.domain``; ``handlers.api`` -> ``handlers``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "core" and len(parts) > 1 else parts[0]


MODULES = product_modules()


def test_every_core_package_says_what_lives_in_it():
    for package in ["core", *CORE_ALLOWED, "handlers", "models"]:
        init = ROOT / package.replace(".", "/") / "__init__.py"
        assert init.exists(), f"{package} has no __init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 80, f"{package}/__init__.py needs a docstring that says what lives there"


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("core.") and name.count(".") >= 2))
def test_core_imports_point_one_way(name):
    here = package_of(name)
    allowed = CORE_ALLOWED[here] | {here}
    wrong = {imported for imported in imports_of(MODULES[name])
             if package_of(imported) not in allowed and imported != "core"
             and not (here == "core.domain" and name == "core.domain.service" and imported.startswith("models"))}
    assert not wrong, f"{name} ({here}) may import only {sorted(allowed)}, imports {sorted(wrong)}"


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("handlers")))
def test_handlers_never_reach_the_database_or_the_server(name):
    wrong = {imported for imported in imports_of(MODULES[name]) if package_of(imported) in ("models", "server")}
    assert not wrong, f"{name} imports {sorted(wrong)}"


def test_only_the_service_and_the_server_reach_models():
    reaching = {name for name, path in MODULES.items()
                if not name.startswith("models") and any(package_of(i) == "models" for i in imports_of(path))}
    assert reaching == {"core.domain.service", "server"}


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("models")))
def test_models_import_nothing_of_the_product_above_them(name):
    wrong = {imported for imported in imports_of(MODULES[name]) if package_of(imported) != "models"}
    assert not wrong, f"{name} imports {sorted(wrong)}"


def test_the_reader_sees_a_wrong_import():
    # The check itself: an import against the direction is found.
    sample = ROOT / "core" / "transport" / "http1.py"
    assert "core.transport.output" in imports_of(sample)
    assert package_of("core.streams.writer") == "core.streams"
    assert "core.streams" not in CORE_ALLOWED["core.transport"]
