"""Settings for the whole suite: the hypothesis profiles, the timeout of slow tests.

``ci`` (the default, used by ``make test``) is derandomized - the same examples on every run
and every machine, so a red CI run is reproducible and never flaky - with no example database,
so nothing is written into the tree. ``explore`` draws new random examples and many more of
them, for hunting: ``HYPOTHESIS_PROFILE=explore .venv/bin/pytest tests/unit -k fuzz``.

Fixtures live next to the tests that use them (``tests/unit/conftest.py``,
``tests/unit/web/conftest.py``, ``tests/integration/conftest.py``), helpers in
``tests/support``; no test module imports another (``tests/unit/test_layout.py`` checks it).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile(
    "explore", max_examples=3000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The default per-test timeout is setup.cfg's ``timeout``; a test marked ``slow`` (a few
# replicas, broker restarts, a minute of fuzzing) gets this one unless it names its own.
SLOW_TIMEOUT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
