"""Browser fixtures: Debian's headless Chromium driven by Selenium, against real workers.

The worker and broker fixtures are the integration tests' own (``tests/support/fixtures.py``:
real broker, ``faust -A bucket_app worker`` subprocesses). Chromium and chromedriver come from
Debian (``scripts/test-tools.sh``, which ``make test`` runs first); both paths are given to
Selenium, so Selenium Manager never looks for, or downloads, a browser or a driver. A missing
browser fails the tests, it never skips them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support.fixtures import kafka_broker, make_worker

__all__ = ["browser", "kafka_broker", "make_worker"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chrome_options() -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.add_argument("--headless=new")
    options.add_argument("--no-sandbox")  # root, as on CI
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument("--disable-gpu")
    options.add_argument("--window-size=1280,1500")
    options.add_argument("--no-first-run")
    options.add_argument("--lang=en-US")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for needed in (CHROMIUM, CHROMEDRIVER):
        if not os.access(needed, os.X_OK):
            pytest.fail(f"{needed} is missing; run scripts/test-tools.sh (make test does)")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(options=chrome_options(), service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
