"""The test suite's own structure: no test module imports another, the unit tier needs no broker.

A test module that imports another runs that module's tests' imports, fixtures and hypothesis
settings twice over and ties the two together invisibly; shared helpers belong in
``tests/support`` and fixtures in a ``conftest.py``. Every import under ``tests/`` (absolute,
relative, or ``import tests.x``) is resolved to a module name and must be ``tests.support...``
or a ``conftest``. The unit tier runs with no broker (``make test-unit``), so nothing under
``tests/unit`` may carry the ``integration`` marker: a test that needs Kafka lives in
``tests/integration``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

TESTS = REPO / "tests"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, a module of ``package``, relative ones
    resolved; for ``from x import y`` both ``x`` and ``x.y`` (y may be a module)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def is_test_module(name: str) -> bool:
    """Whether ``name`` is a module file of the suite other than the support package or a
    conftest (a package is not: ``from tests.unit import x`` is judged by ``x``)."""
    if name != "tests" and not name.startswith("tests."):
        return False
    if name == "tests.support" or name.startswith("tests.support."):
        return False
    if name.rsplit(".", 1)[-1] == "conftest":
        return False
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").is_file()


def test_no_test_module_imports_another() -> None:
    sources = sorted(TESTS.rglob("*.py"))
    assert len(sources) > 50, "the walk found the suite"
    offenders = []
    for path in sources:
        module = module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        offenders += [f"{path.relative_to(REPO)}:{line}: imports {name}"
                      for line, name in imported_modules(path.read_text(), package)
                      if is_test_module(name)]
    assert offenders == [], (
        "test modules import each other; move what they share into tests/support (helpers) "
        "or a conftest.py (fixtures):\n" + "\n".join(offenders))


def test_the_check_sees_every_kind_of_import() -> None:
    """The checker itself: absolute, relative and plain imports of test modules are found;
    imports of the support package and of conftest modules are not."""
    source = ("from .test_sql import make_db\nimport tests.unit.test_cli\n"
              "from tests.unit import test_identity\nfrom tests.support.web import ts\n"
              "from tests.unit.web.conftest import served\nfrom . import conftest\n"
              "from .. import test_docs\nimport bucket_app.settings\n")
    names = {name for _, name in imported_modules(source, "tests.unit.sql")}
    assert {"tests.unit.sql.test_sql", "tests.unit.sql.conftest", "tests.unit.test_docs",
            "tests.support.web.ts"} <= names, names
    flagged = {name for name in names if is_test_module(name)}
    assert flagged == {"tests.unit.sql.test_sql", "tests.unit.test_cli",
                       "tests.unit.test_identity", "tests.unit.test_docs"}, flagged


def test_nothing_in_the_unit_tier_is_marked_integration() -> None:
    offenders = []
    for path in sorted((TESTS / "unit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "integration" and (
                    isinstance(node.value, ast.Attribute) and node.value.attr == "mark"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == [], ("tests that need Kafka belong in tests/integration: "
                             + ", ".join(offenders))
