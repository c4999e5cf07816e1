"""The dashboard with ``http_token`` set: the page asks for the token, keeps it in localStorage,
sends it as ``Authorization: Bearer`` on every API call and as ``access_token`` on the stream
(EventSource cannot send headers), which is the only route that takes it in the URL.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.support.browser import bucket, by, console_errors, make_messages, plotted, wait_until
from tests.support.kafka import create_topic, produce, unique

pytestmark = pytest.mark.integration

TOKEN = "browser-test-token"  # noqa: S105 - a test's own token


def test_dashboard_works_with_a_token(make_worker: Any, browser: webdriver.Chrome) -> None:
    topic = unique("dash-token")
    create_topic(topic, 6)
    worker = make_worker(topic, extra={"http_token": TOKEN}).start()
    records, expected = make_messages({"alpha": 2, "bravo": 3}, [bucket(time.time() - 200)])
    worker.wait_caught_up(produce(topic, records))

    # the page and its assets are public; the data is not, and the stream takes the token
    # in the URL, the other routes do not
    assert worker.get("/").status == 200
    assert worker.get("/static/dashboard.js").status == 200
    assert worker.get("/api/v1/meta").status == 401
    assert worker.get("/api/v1/stream").status == 401
    assert worker.get("/api/v1/stream?access_token=wrong").status == 401
    assert worker.get(f"/api/v1/sql?q=SELECT%201&access_token={TOKEN}").status == 401

    browser.get(worker.url + "/")
    notice = browser.find_element(By.ID, "notice")
    wait_until(browser, "the token notice", lambda: "token" in notice.text)
    assert plotted(browser) == {}
    field = browser.find_element(By.ID, "token")
    field.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_until(browser, "the counts", lambda: plotted(browser) == by(expected, "server_name"))
    wait_until(browser, "the live badge",
               lambda: browser.find_element(By.ID, "live").text == "live")

    live, live_expected = make_messages({"carol": 1}, [bucket(time.time() - 20)])
    produce(topic, live)
    everything: Counter[tuple[str, str, int]] = expected + live_expected
    wait_until(browser, "the live counts",
               lambda: plotted(browser) == by(everything, "server_name"))

    # the token is remembered
    browser.refresh()
    wait_until(browser, "the counts after a reload",
               lambda: plotted(browser) == by(everything, "server_name"))
    assert browser.execute_script("return localStorage.getItem('bucket_app.token')") == TOKEN
    assert console_errors(browser) == []
