"""The dashboard in a real headless Chromium against a real worker and broker.

The page writes what it plots into the DOM (``#chart[data-plotted]``, one entry per plotted
point); the tests compare that, the uPlot legend, the top-N table and the SQL console's table
with counts computed here from the messages the test produced. No console error is allowed.
Set ``BUCKET_APP_SCREENSHOT=docs/dashboard.png`` to also copy the screenshot for the README.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.support import REPO
from tests.support.browser import (
    INTERVAL,
    bucket,
    by,
    console_errors,
    make_messages,
    plotted,
    wait_until,
)
from tests.support.kafka import create_topic, produce, unique

pytestmark = pytest.mark.integration

SERVERS = {"alpha": 9, "bravo": 5, "charlie": 2}  # messages per bucket and topic


def legend(driver: webdriver.Chrome, element_id: str = "chart") -> list[str]:
    labels: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(l => l.textContent);",
        f"#{element_id} .u-legend .u-series .u-label")
    return labels[1:]  # the first is the x axis


def table_rows(driver: webdriver.Chrome, element_id: str) -> list[list[str]]:
    """The table's cells, read in one script: the page re-renders tables as counts change."""
    rows: list[list[str]] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map("
        "  tr => Array.from(tr.cells).map(td => td.textContent));", f"#{element_id} tbody tr")
    return rows


def test_dashboard_plots_exact_counts_switches_columns_runs_sql_and_updates_live(
        make_worker: Any, browser: webdriver.Chrome, tmp_path: Path) -> None:
    topic = unique("dash")
    create_topic(topic, 6)
    worker = make_worker(topic).start()
    now = time.time()
    # 12 buckets, two without messages in between
    starts = [bucket(now - 320) + INTERVAL * k for k in range(14) if k not in (8, 9)]
    records, expected = make_messages(SERVERS, starts)
    worker.wait_caught_up(produce(topic, records))

    browser.get(worker.url + "/")
    browser.execute_script("window.__loaded_once = true;")

    # the chart plots per server (the first mapped column) exactly what was produced
    want = by(expected, "server_name")
    wait_until(browser, "the server_name counts", lambda: plotted(browser) == want)
    assert browser.find_element(By.ID, "chart").get_attribute("data-column") == "server_name"
    assert sorted(legend(browser)) == sorted(SERVERS)
    assert browser.find_element(By.CSS_SELECTOR, "#chart canvas").size["width"] > 300
    # the top-N table: servers by total, largest first
    totals = Counter({s: sum(c for (v, _), c in want.items() if v == s) for s in SERVERS})
    top = table_rows(browser, "top")
    assert [(row[1], int(row[2].replace(",", ""))) for row in top] == totals.most_common()
    # the latest buckets, each told final/closed or open
    buckets = table_rows(browser, "buckets")
    assert len(buckets) == len(starts)
    assert [int(row[2].replace(",", "")) for row in buckets] == [
        sum(c for (_, s), c in want.items() if s == start) for start in sorted(starts)[::-1]]
    assert all(row[4] in ("final", "closed", "open") for row in buckets)

    # picking another column changes the series
    Select(browser.find_element(By.ID, "column")).select_by_visible_text("topic")
    want_topics = by(expected, "topic")
    wait_until(browser, "the topic counts", lambda: plotted(browser) == want_topics)
    assert sorted(legend(browser)) == ["t0", "t1"]

    # the SQL console: a table, and a chart since the result has bucket_start
    sql = browser.find_element(By.ID, "sql")
    sql.clear()
    sql.send_keys('SELECT server_name, bucket_start, sum(count) AS count FROM "default" '
                  "GROUP BY 1, 2 ORDER BY 2, 1")
    browser.find_element(By.CSS_SELECTOR, "#sql-form button[type=submit]").click()
    wait_until(browser, "the SQL result",
               lambda: len(table_rows(browser, "sql-result")) == len(want))
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#sql-result thead th")]
    assert headers == ["server_name", "bucket_start", "count"]
    got = {(r[0], int(r[1])): int(r[2]) for r in table_rows(browser, "sql-result")}
    assert got == want
    assert plotted(browser, "sql-chart") == want
    assert sorted(legend(browser, "sql-chart")) == sorted(SERVERS)

    # a message produced now appears without a reload
    live_start = bucket(time.time() - INTERVAL)
    live, live_expected = make_messages({"delta-live": 3}, [live_start])
    produce(topic, live)
    want_topics_live = by(expected + live_expected, "topic")
    wait_until(browser, "the live counts", lambda: plotted(browser) == want_topics_live,
               timeout_s=15)
    assert browser.execute_script("return window.__loaded_once === true;")
    changes = browser.find_element(By.ID, "changes").text
    assert "server_name=delta-live" in changes
    assert browser.find_element(By.ID, "live").text == "live"

    Select(browser.find_element(By.ID, "column")).select_by_visible_text("server_name")
    want_live = by(expected + live_expected, "server_name")
    wait_until(browser, "the server counts with the live ones",
               lambda: plotted(browser) == want_live)
    assert sorted(legend(browser)) == sorted([*SERVERS, "delta-live"])

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    target = os.environ.get("BUCKET_APP_SCREENSHOT")
    if target:
        shutil.copyfile(shot, REPO / target)
    assert console_errors(browser) == []


def test_granularity_and_range_pickers_change_the_buckets(make_worker: Any,
                                                          browser: webdriver.Chrome) -> None:
    topic = unique("dash-gran")
    create_topic(topic, 6)
    worker = make_worker(topic).start()
    now = time.time()
    old = bucket(now - 3 * 86400)  # outside the default range (24 hours)
    recent = [bucket(now - 1200) + INTERVAL * k for k in range(0, 30, 7)]
    records, expected = make_messages({"alpha": 2, "bravo": 1}, [old, *recent])
    worker.wait_caught_up(produce(topic, records))

    browser.get(worker.url + "/")
    in_range = Counter({k: v for k, v in expected.items() if k[2] != old})
    wait_until(browser, "the last day's counts",
               lambda: plotted(browser) == by(in_range, "server_name"))

    Select(browser.find_element(By.ID, "range")).select_by_visible_text("everything")
    wait_until(browser, "every count", lambda: plotted(browser) == by(expected, "server_name"))

    # hourly in UTC: the counts summed per hour, computed here
    tz = browser.find_element(By.ID, "tz")
    tz.clear()
    tz.send_keys("UTC\n")
    browser.execute_script("document.getElementById('tz').dispatchEvent(new Event('change'))")
    Select(browser.find_element(By.ID, "granularity")).select_by_visible_text("1h")
    hourly: Counter[tuple[str, int]] = Counter()
    for (server, _topic, start), count in expected.items():
        hourly[(server, start - start % 3600)] += count
    wait_until(browser, "hourly counts", lambda: plotted(browser) == dict(hourly))
    assert console_errors(browser) == []
