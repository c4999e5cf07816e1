"""The README stays true to the code: every settings key and every route is documented."""

from __future__ import annotations

import re
from pathlib import Path

from bucket_app.settings import KEYS

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


def test_every_route_is_in_the_http_reference():
    web = (REPO / "bucket_app" / "web" / "views.py").read_text()
    routes = set(re.findall(r'@app\.page\(f?"([^"]+)"\)', web))
    assert routes, "no routes found"
    documented = {
        "/a/{table}": "`GET /a/<table>`", "/c/{sql:.*}": "`GET /c/<sql>`", "/r": "`GET /r`",
        "/rst": "`GET /rst`", "/health": "`GET /health`",
        "{API}/buckets": "`GET /api/v1/buckets`", "{API}/sql": "`GET /api/v1/sql?q=<sql>`",
    }
    assert routes == set(documented)
    for text in documented.values():
        assert text in README


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```")[1]
    assert "make run" in first_block and "make test" in first_block
