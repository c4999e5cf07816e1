"""The README stays true to the code: every settings key and every route is documented."""

from __future__ import annotations

import re
from pathlib import Path

from bucket_app.settings import KEYS
from tests.support.web import build_app, make_settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_every_settings_key_is_in_the_reference_with_its_default_and_variable():
    rows = {m.group(2): m.group(0) for m in re.finditer(
        r"^\| `(\w+)` \| `(\w+)` \|.*$", README, flags=re.MULTILINE)}
    assert set(rows) == {key.name for key in KEYS}
    for key in KEYS:
        row = rows[key.name]
        assert f"`{key.section}`" in row
        assert f"`{key.env}`" in row
        default = "required" if key.default is None else f"`{key.default}`"
        assert f"| {default} |" in row, key.name


def test_every_route_is_in_the_http_reference(tmp_path):
    """Every route the worker's web app registers, read from its router, has its README row."""
    app, _ = build_app(make_settings(tmp_path))
    routes = {route.resource.canonical for route in app.web.web_app.router.routes()
              if route.resource is not None}
    documented = {
        "/a/{table}": "`GET /a/<table>`", "/c/{sql}": "`GET /c/<sql>`", "/r": "`GET /r`",
        "/rst": "`GET /rst`", "/health": "`GET /health`",
        "/api/v1/buckets": "`GET /api/v1/buckets`", "/api/v1/sql": "`GET /api/v1/sql?q=<sql>`",
        "/api/v1/stream": "`GET /api/v1/stream`", "/metrics": "`GET /metrics`",
        "/": "`GET /`", "/static/{name}": "`/static/`", "/api/v1/meta": "`GET /api/v1/meta`",
        "/api/v1/openapi.json": "`GET /api/v1/openapi.json`",
    }
    assert routes == set(documented)
    for text in documented.values():
        assert text in README, text


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```")[1]
    assert "make run" in first_block and "make test" in first_block


def layout_names() -> dict[str, set[str]]:
    """docs/design.md's Layout block: the words under each ``package/`` entry, and under ``""``
    the top-level ``name.py`` entries."""
    design = (REPO / "docs" / "design.md").read_text()
    section = design.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```")[1]
    named: dict[str, set[str]] = {"": set()}
    current = ""
    for line in block.splitlines():
        entry = re.match(r"^  (\S+)", line)
        if entry:
            current = entry.group(1).rstrip("/") if entry.group(1).endswith("/") else ""
            if current == "":
                named[""].add(entry.group(1))
        if current:
            named.setdefault(current, set()).update(re.findall(r"\w+", line))
    return named


def test_every_module_of_the_package_is_named_in_the_design_layout():
    named = layout_names()
    package = REPO / "bucket_app"
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if path.name == "__init__.py" or "static" in relative.parts:
            continue
        if len(relative.parts) == 1:
            found = relative.name in named[""]
        else:
            found = path.stem in named.get("/".join(relative.parts[:-1]), set())
        if not found:
            missing.append(str(relative))
    assert missing == [], "not in docs/design.md's Layout: " + ", ".join(missing)
