"""Web limits: SQL admission (429 / 503, fair order), the bearer token, and one JSON error shape
even for what aiohttp's parser refuses.

The HTTP tests run the real routes (``routes.register`` on a Faust app that is never started) on
a real aiohttp server built by ``middleware.make_runner``, the runner the worker serves with,
over a real SQLite snapshot and real SQL child processes. Clients with different addresses bind to
127.0.0.1 and 127.0.0.2 (the whole loopback range answers on Linux).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import faust
import pytest
from aiohttp import web as aioweb

from bucket_app.errors import HttpError
from bucket_app.web import middleware
from bucket_app.web.admission import SqlAdmission
from tests.support.web import (
    TIME_LIMIT_S,
    Served,
    assert_error_shape,
    build_app,
    client,
    make_settings,
)

# runs until the time limit stops it
ENDLESS = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
# --- SqlAdmission on its own -------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_admit_refuses_a_client_over_its_limit_with_429_and_retry_after() -> None:
    admission = SqlAdmission(2, client_limit=1, queue_limit=16, retry_after_s=2)
    with admission.admit("10.0.0.1"):
        with pytest.raises(HttpError) as caught, admission.admit("10.0.0.1"):
            pass
        assert caught.value.status == 429
        assert caught.value.context["retry_after_s"] == 2
        with admission.admit("10.0.0.2"):  # another client is not affected
            pass
    with admission.admit("10.0.0.1"):  # the place is given back
        pass
    assert admission.per_client == {} and admission.total == 0


def test_admit_refuses_anyone_over_the_overall_bound_with_503() -> None:
    admission = SqlAdmission(2, client_limit=2, queue_limit=3, retry_after_s=1)
    with admission.admit("a"), admission.admit("a"), admission.admit("b"):
        with pytest.raises(HttpError) as caught, admission.admit("c"):
            pass
        assert caught.value.status == 503
        assert caught.value.context["retry_after_s"] == 1
    assert admission.total == 0


async def test_a_freed_slot_goes_to_the_least_used_client_not_the_oldest() -> None:
    clock = Clock()
    admission = SqlAdmission(1, client_limit=1, queue_limit=16, retry_after_s=1, clock=clock)
    admission._charge("heavy", 2.0)  # a runaway query earlier
    admission._charge("light", 0.001)
    order: list[str] = []
    hold = asyncio.Event()

    async def job(name: str, gate: asyncio.Event | None = None) -> str:
        if gate is not None:
            await gate.wait()
        order.append(name)
        return name

    first = asyncio.create_task(admission.run("other", lambda: job("other", hold)))
    await asyncio.sleep(0)
    heavy = asyncio.create_task(admission.run("heavy", lambda: job("heavy")))
    await asyncio.sleep(0)
    light = asyncio.create_task(admission.run("light", lambda: job("light")))
    await asyncio.sleep(0)
    assert len(admission.waiting) == 2 and admission.free == 0
    hold.set()
    assert await asyncio.gather(first, heavy, light) == ["other", "heavy", "light"]
    assert order == ["other", "light", "heavy"]
    assert admission.free == 1 and not admission.waiting


async def test_usage_decays_with_its_half_life() -> None:
    clock = Clock()
    admission = SqlAdmission(1, 1, 16, 1, half_life_s=10, clock=clock)
    admission._charge("a", 4.0)
    clock.now += 20
    assert admission.used_s("a") == pytest.approx(1.0)
    assert admission.used_s("never-seen") == 0.0


async def test_a_cancelled_waiter_gives_its_slot_on() -> None:
    admission = SqlAdmission(1, 1, 16, 1)
    hold = asyncio.Event()

    async def wait_for_hold() -> None:
        await hold.wait()

    async def nothing() -> str:
        return "ran"

    first = asyncio.create_task(admission.run("a", wait_for_hold))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(admission.run("b", nothing))
    await asyncio.sleep(0)
    cancelled.cancel()
    third = asyncio.create_task(admission.run("c", nothing))
    await asyncio.sleep(0)
    hold.set()
    await first
    assert await asyncio.wait_for(third, 2) == "ran"
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert admission.free == 1


# --- the real views on the worker's runner -----------------------------------------------------

async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any, Any]:
    async with session.get(url) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, response.headers, await response.json()


@pytest.mark.parametrize("settings_extra", [{"sql_client_limit": "1"},
                                            {"sql_client_limit": "2"}])
async def test_one_client_flooding_c_gets_429_while_another_is_answered(
        served: Served, settings_extra: dict[str, str]) -> None:
    limit = int(settings_extra["sql_client_limit"])
    flood_url = served.url + "/c/" + quote(ENDLESS)
    async with client("127.0.0.1") as flooder, client("127.0.0.2") as other:
        flood = [asyncio.create_task(get(flooder, flood_url)) for _ in range(8)]
        await asyncio.sleep(0.1)  # the flood is in
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            status, _, body = await get(other, served.url + "/c/" + quote("SELECT 1 AS one"))
            latencies.append(time.monotonic() - started)
            assert (status, body) == (200, [{"one": 1}])
        answers = await asyncio.gather(*flood)
    # FIFO behind the flood would be 8 x 0.5 s over limit + 1 children
    assert max(latencies) < 2 * TIME_LIMIT_S, latencies
    statuses = sorted(status for status, _, _ in answers)
    # `limit` of them ran to the time limit, the rest were refused at once
    assert statuses == [400] * limit + [429] * (8 - limit), statuses
    for status, headers, body in answers:
        assert_error_shape(body, status)
        if status == 429:
            assert headers["Retry-After"] == "1"
        else:
            assert "time limit" in body["error"]


@pytest.mark.parametrize("settings_extra", [{"sql_client_limit": "1"}])
async def test_every_sql_route_shares_the_admission(served: Served) -> None:
    async with client("127.0.0.1") as flooder:
        running = asyncio.create_task(get(flooder, served.url + "/c/" + quote(ENDLESS)))
        await asyncio.sleep(0.1)
        for path in ["/a/default", "/c/SELECT%201", "/api/v1/buckets",
                     "/api/v1/sql?q=SELECT%201"]:
            status, headers, body = await get(flooder, served.url + path)
            assert status == 429, (path, body)
            assert_error_shape(body, 429)
            assert headers["Retry-After"] == "1"
        async with flooder.post(served.url + "/api/v1/sql", json={"sql": "SELECT 1"}) as answer:
            assert answer.status == 429
        # routes without SQL are not counted
        status, _, _ = await get(flooder, served.url + "/rst")
        assert status == 200
        assert (await running)[0] == 400
        status, _, body = await get(flooder, served.url + "/api/v1/sql?q=SELECT%201")
        assert status == 200 and body["rows"] == [{"1": 1}]


@pytest.mark.parametrize("settings_extra", [{"sql_queue_limit": "1"}])
async def test_over_the_overall_bound_anyone_gets_503(served: Served) -> None:
    async with client("127.0.0.1") as first, client("127.0.0.2") as second:
        running = asyncio.create_task(get(first, served.url + "/c/" + quote(ENDLESS)))
        await asyncio.sleep(0.1)
        status, headers, body = await get(second, served.url + "/c/SELECT%201")
        assert status == 503
        assert_error_shape(body, 503)
        assert headers["Retry-After"] == "1"
        assert "sql_queue_limit" in body["error"]
        assert (await running)[0] == 400
        status, _, _ = await get(second, served.url + "/c/SELECT%201")
        assert status == 200


@pytest.mark.parametrize("settings_extra", [{"http_token": "s3cret-token"}])
async def test_token_is_needed_on_every_route_but_health(served: Served) -> None:
    routes = ["/api/v1/sql?q=SELECT%201", "/c/SELECT%201", "/a/default", "/rst", "/no-such"]
    async with client() as anonymous, client(Authorization="Bearer wrong") as wrong, \
            client(Authorization="Bearer s3cret-token") as right:
        for path in routes:
            for session in (anonymous, wrong):
                status, headers, body = await get(session, served.url + path)
                assert status == 401, (path, body)
                assert_error_shape(body, 401)
                assert headers["WWW-Authenticate"] == "Bearer"
            status, _, _ = await get(right, served.url + path)
            assert status == (404 if path == "/no-such" else 200), path
        status, _, body = await get(anonymous, served.url + "/health")
        assert status == 200 and body["status"] == "ok"


async def raw_request(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` as is (no client library to refuse it) and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # the server closes after an error
    finally:
        writer.close()
    header, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = header.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("head", "status", "words"), [
    (b"GET /c/" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "URL"),
    (b"GET /rst HTTP/1.1\r\nHost: t\r\nX-Big: " + b"y" * 9_000 + b"\r\n\r\n", 431, "header"),
    (b"GET /rst HTTP/1.1\r\nHost: t\r\nX-" + b"n" * 9_000 + b": 1\r\n\r\n", 431, "header"),
    (b"\x16\x03\x01 not http at all\r\n\r\n", 400, "parsed"),
])
async def test_what_the_parser_refuses_is_json_too(served: Served, head: bytes, status: int,
                                                   words: str) -> None:
    got, headers, body = await raw_request(served.port, head)
    assert got == status
    assert headers["content-type"].startswith("application/json")
    parsed = json.loads(body)
    assert_error_shape(parsed, status)
    assert words in parsed["error"]


async def test_a_long_url_within_the_limit_still_reaches_the_view(served: Served) -> None:
    sql = "SELECT 1 AS one WHERE '" + "x" * 12_000 + "' <> ''"
    async with client() as session:
        status, _, body = await get(session, served.url + "/c/" + quote(sql))
    assert (status, body) == (200, [{"one": 1}])


# --- start-up -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "warned"), [
    ({"web_host": "0.0.0.0"}, True),  # noqa: S104 - the case the warning is for
    ({"web_host": "0.0.0.0", "http_token": "t"}, False),  # noqa: S104
    ({"web_host": "127.0.0.1"}, False),
    ({"web_host": "::1"}, False),
    ({"web_host": "localhost"}, False),
])
def test_warning_when_listening_beyond_loopback_without_a_token(
        tmp_path: Path, db: Path, caplog: pytest.LogCaptureFixture, extra: dict[str, str],
        warned: bool) -> None:
    with caplog.at_level(logging.WARNING, logger="bucket_app.web.routes"):
        _, service = build_app(make_settings(tmp_path, **extra))
    service.sql.close()
    warnings = [r for r in caplog.records if "http_token" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)


def test_private_names_the_json_errors_rely_on() -> None:
    """Contract test: fails on the Faust or aiohttp upgrade that moves them."""
    app = faust.App(f"test-web-{uuid.uuid4().hex[:8]}")
    assert isinstance(app.web._runner, aioweb.AppRunner)  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(aioweb.AppRunner._make_server)
    params = list(inspect.signature(aioweb.RequestHandler.handle_error).parameters)
    assert params == ["self", "request", "status", "exc", "message"]
    assert aioweb.RequestHandler.__slots__ and middleware.JsonErrorRequestHandler.__slots__ == ()
    middleware.use_json_error_runner(app.web)
    assert isinstance(app.web._runner, middleware.JsonErrorAppRunner)  # type: ignore[attr-defined]


async def test_a_snapshot_not_loaded_is_503_at_once_unless_wait_ms_is_given(
        served: Served) -> None:
    """A replica still loading its snapshot sends a client (or a load balancer) on to another
    at once; a client that asks to wait (wait_ms), or for a position (min_offsets), waits."""
    state = served.service.reader.state
    state.generation, state.changelog = 0, {}  # restarted: nothing loaded yet
    async with client() as session:
        for path, least_s, most_s in (("/a/default", 0, 0.5),
                                      ("/a/default?wait_ms=600", 0.6, 3),
                                      ("/api/v1/buckets", 0, 0.5)):
            started = time.monotonic()
            status, headers, body = await get(session, served.url + path)
            took = time.monotonic() - started
            assert status == 503 and headers["Retry-After"] == "1", (path, body)
            assert_error_shape(body, 503)
            assert least_s <= took < most_s, (path, took)
