"""Fixtures of the web tests: a live snapshot file and the real views served over it.

``served`` is the worker's web app (:func:`tests.support.web.build_app`) on a free loopback
port over ``db``, a WAL-mode snapshot of 50 rows; a test changes its settings by
parametrizing ``settings_extra`` (``{"sql_client_limit": "1"}``, ...). A module may define its
own ``served`` (test_openapi.py does); pytest prefers the module's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.sqlite import make_db
from tests.support.web import Served, build_app, make_settings, running


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "snap.sqlite3"
    rows = [(f"s-{i % 3}", "t", i * 20, i * 20 + 20, 1, 1) for i in range(50)]
    writer = make_db(path, "default", rows)
    yield path
    writer.close()


@pytest.fixture
def settings_extra() -> dict[str, str]:
    return {}


@pytest.fixture
async def served(tmp_path: Path, db: Path, settings_extra: dict[str, str],
                 ) -> AsyncIterator[Served]:
    app, service = build_app(make_settings(tmp_path, **settings_extra))
    async with running(app, service) as (url, runner):
        yield Served(url, service, runner.addresses[0][1])
