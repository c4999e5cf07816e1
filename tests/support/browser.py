"""What the dashboard tests share: messages with known counts, and reading the page.

:func:`make_messages` produces messages per server, topic (t0, t1) and 20 s bucket with counts
that differ from bucket to bucket, and returns their counts, computed here; :func:`by` sums them
per column, as the chart plots them. :func:`plotted` reads what the page says it plotted
(``#chart[data-plotted]``); :func:`wait_until` waits for the page, failing with the browser log.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.kafka import Record

INTERVAL = 20


def bucket(ts: float) -> int:
    return math.floor(ts / INTERVAL) * INTERVAL


def make_messages(server_counts: dict[str, int], starts: list[int],
                  ) -> tuple[list[Record], Counter[tuple[str, str, int]]]:
    """Messages for each server, topic t0/t1 and bucket, about ``server_counts`` a bucket but
    varying from bucket to bucket; and their counts."""
    records: list[Record] = []
    expected: Counter[tuple[str, str, int]] = Counter()
    i = 0
    for s, (server, per_bucket) in enumerate(server_counts.items()):
        for j, start in enumerate(starts):
            for topic_index, topic in enumerate(("t0", "t1")):
                # t1 gets one more than t0, so the two columns' series differ
                for k in range(per_bucket + topic_index + (j * 5 + s * 2) % 7):
                    ts = start + (k * 3) % INTERVAL + 0.25
                    records.append(Record(json.dumps({
                        "origin_server": server, "topic": topic, "timestamp": ts}).encode(),
                        partition=i % 6))
                    expected[(server, topic, bucket(ts))] += 1
                    i += 1
    return records, expected


def by(expected: Counter[tuple[str, str, int]], column: str) -> dict[tuple[str, int], int]:
    """Counts per (value of column, bucket start): what the chart plots for that column."""
    index = {"server_name": 0, "topic": 1}[column]
    out: Counter[tuple[str, int]] = Counter()
    for key, count in expected.items():
        out[(key[index], key[2])] += count
    return dict(out)


def plotted(driver: webdriver.Chrome, element_id: str = "chart") -> dict[tuple[str, int], int]:
    raw = driver.find_element(By.ID, element_id).get_attribute("data-plotted") or "[]"
    return {(p["series"], p["bucket_start"]): p["count"] for p in json.loads(raw)}


def wait_until(driver: webdriver.Chrome, what: str, check: Any, timeout_s: float = 20) -> None:
    try:
        WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(lambda d: check())
    except Exception as exc:
        raise AssertionError(f"{what} not shown in {timeout_s}s; browser log: "
                             f"{driver.get_log('browser')}") from exc


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
