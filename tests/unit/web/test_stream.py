"""GET /api/v1/stream: changed rows as Server-Sent Events, resumable by position token.

The real views on the worker's runner (as in test_web_limits) over a real SQLite snapshot and
real SQL child processes; the test plays the snapshot reader: it writes rows with a new RST_ID
through its own SQLite connection, then moves the reader state's generation and position, as a
refresh does. Expected events are computed from the rows the test itself wrote.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web as aioweb

from bucket_app.snapshot.reader import Progress
from bucket_app.web import stream as stream_mod
from bucket_app.web.params import encode_token
from bucket_app.web.service import Service
from bucket_app.web.stream import Positions
from tests.support.sqlite import make_db
from tests.support.web import assert_error_shape, build_app, make_settings, running

ROWS = [(f"s-{i % 3}", "t", i * 20, i * 20 + 20, i + 1, 1) for i in range(50)]
COLUMNS = ("server_name", "topic", "bucket_start", "bucket_end", "count", "RST_ID")


def as_dicts(rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


@dataclass
class Served:
    url: str
    service: Service
    runner: aioweb.AppRunner
    writer: Any  # sqlite3.Connection

    def refresh(self, changes: list[tuple[str, int, int]], inserts: list[tuple] = ()) -> None:
        """One snapshot refresh: set (server, bucket_start) rows' counts, insert rows, bump the
        generation and the position of partition 0."""
        state = self.service.reader.state
        generation = state.generation + 1
        for server, start, count in changes:
            self.writer.execute('UPDATE "default" SET count = ?, RST_ID = ? '
                                "WHERE server_name = ? AND bucket_start = ?",
                                (count, generation, server, start))
        for row in inserts:
            self.writer.execute('INSERT INTO "default" VALUES (?, ?, ?, ?, ?, ?)',
                                (*row[:5], generation))
        state.generation = generation
        offset = state.offset(0) + 10
        state.progress = {**state.progress, 0: Progress(offset=offset)}

    def token(self) -> str:
        return encode_token(self.service.reader.state.position())


@pytest.fixture
def settings_extra() -> dict[str, str]:
    return {}


@pytest.fixture
async def served(tmp_path: Path, settings_extra: dict[str, str]) -> AsyncIterator[Served]:
    writer = make_db(tmp_path / "snap.sqlite3", "default", ROWS)
    app, service = build_app(make_settings(tmp_path, **settings_extra))
    service.reader.state.progress = {0: Progress(offset=5), 1: Progress(offset=3)}
    try:
        async with running(app, service) as (url, runner):
            yield Served(url, service, runner, writer)
    finally:
        writer.close()


class Events:
    """A minimal SSE parser over an aiohttp response (what EventSource does)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.last_id: str | None = None
        self.comments: list[str] = []

    async def next(self, timeout_s: float = 5) -> dict[str, Any] | None:
        """The next dispatched event ({event, data, id}); None at the end of the stream."""
        event: dict[str, Any] = {}
        data: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(),
                                         max(deadline - time.monotonic(), 0.01))
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    event["data"] = "\n".join(data)
                    event["id"] = self.last_id
                    return event
                event = {}
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                self.comments.append(value)
            elif field == "data":
                data.append(value)
            elif field == "event":
                event["event"] = value
            elif field == "id":
                self.last_id = value

    async def rows(self, n: int, timeout_s: float = 5) -> list[dict[str, Any]]:
        found = []
        for _ in range(n):
            event = await self.next(timeout_s)
            assert event is not None, f"stream ended after {len(found)} of {n} rows"
            assert event.get("event") == "row", event
            found.append({**orjson.loads(event["data"]), "_id": event["id"]})
        return found

    async def quiet(self, seconds: float) -> None:
        """Assert no event is dispatched for ``seconds``."""
        with pytest.raises(asyncio.TimeoutError):
            extra = await self.next(seconds)
            raise AssertionError(f"unexpected event {extra}")


def session(**headers: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60))


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "_id"} for row in rows]


async def test_full_set_first_then_each_refresh_only_its_changed_rows(served: Served) -> None:
    async with session() as client, client.get(served.url + "/api/v1/stream") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = Events(response)
        first = await events.rows(len(ROWS))
        assert strip(first) == as_dicts(ROWS)
        # only the last row of a refresh carries the id: a client cut off mid-refresh resumes
        # from the previous one
        assert [r["_id"] for r in first[:-1]] == [None] * (len(ROWS) - 1)
        assert first[-1]["_id"] == served.token()
        await events.quiet(0.6)

        started = time.monotonic()
        served.refresh([("s-1", 20, 500), ("s-2", 40, 700)],
                       inserts=[("s-9", "t", 5000, 5020, 3)])
        changed = await events.rows(3)
        assert time.monotonic() - started < 1.5
        assert strip(changed) == [
            {"server_name": "s-1", "topic": "t", "bucket_start": 20, "bucket_end": 40,
             "count": 500, "RST_ID": 2},
            {"server_name": "s-2", "topic": "t", "bucket_start": 40, "bucket_end": 60,
             "count": 700, "RST_ID": 2},
            {"server_name": "s-9", "topic": "t", "bucket_start": 5000, "bucket_end": 5020,
             "count": 3, "RST_ID": 2},
        ]
        assert [r["_id"] for r in changed] == [first[-1]["_id"], first[-1]["_id"],
                                               served.token()]
        await events.quiet(0.6)


async def test_filters_as_on_buckets(served: Served) -> None:
    url = served.url + "/api/v1/stream?server_name=s-1&from=100&to=400"
    expected = [r for r in as_dicts(ROWS)
                if r["server_name"] == "s-1" and r["bucket_end"] > 100 and r["bucket_start"] < 400]
    assert 0 < len(expected) < len(ROWS)
    async with session() as client, client.get(url) as response:
        events = Events(response)
        assert strip(await events.rows(len(expected))) == expected
        await events.quiet(0.5)
        # a refresh that changed rows outside the filters: no event, but the id moves on
        served.refresh([("s-2", 200, 9)])
        await events.quiet(0.8)
        assert events.last_id == served.token()
        served.refresh([("s-1", 200, 11), ("s-1", 600, 12)])
        (row,) = await events.rows(1)
        assert (row["server_name"], row["bucket_start"], row["count"]) == ("s-1", 200, 11)


@pytest.mark.parametrize("how", ["header", "query"])
async def test_a_client_resuming_with_its_last_id_misses_nothing(served: Served, how: str,
                                                                 ) -> None:
    async with session() as client:
        async with client.get(served.url + "/api/v1/stream") as response:
            events = Events(response)
            await events.rows(len(ROWS))
            served.refresh([("s-0", 0, 100)])
            await events.rows(1)
            last_id = events.last_id
        assert last_id == served.token()
        # while it is away, two refreshes
        served.refresh([("s-1", 20, 101)])
        served.refresh([("s-2", 40, 102)], inserts=[("s-7", "t", 9000, 9020, 1)])
        headers = {"Last-Event-ID": last_id} if how == "header" else {}
        url = served.url + "/api/v1/stream" + (f"?last_event_id={last_id}" if how == "query"
                                               else "")
        async with client.get(url, headers=headers) as response:
            events = Events(response)
            got = strip(await events.rows(4))
            await events.quiet(0.6)
    # everything changed since, and (being conservative by one refresh) the refresh the id
    # came with again; not the untouched rows
    assert {(r["server_name"], r["bucket_start"], r["count"]) for r in got} == {
        ("s-0", 0, 100), ("s-1", 20, 101), ("s-2", 40, 102), ("s-7", 9000, 1)}


async def test_an_unknown_last_id_gets_the_full_current_set(served: Served) -> None:
    served.refresh([("s-1", 20, 42)])
    async with session(**{"Last-Event-ID": "WzEsMiwzXQ"}) as client, \
            client.get(served.url + "/api/v1/stream") as response:
        events = Events(response)
        got = strip(await events.rows(len(ROWS)))
    expected = as_dicts(ROWS)
    expected[1] = {**expected[1], "count": 42, "RST_ID": 2}
    assert sorted(got, key=lambda r: r["bucket_start"]) == expected


@pytest.mark.parametrize("settings_extra", [{"sql_row_limit": "7"}])
async def test_a_refresh_larger_than_the_row_limit_is_sent_whole(served: Served) -> None:
    async with session() as client, client.get(served.url + "/api/v1/stream") as response:
        events = Events(response)
        got = await events.rows(len(ROWS))
        assert strip(got) == as_dicts(ROWS)
        assert [r["_id"] is not None for r in got].count(True) == 1
        await events.quiet(0.5)


async def test_bad_filter_is_a_json_400(served: Served) -> None:
    async with session() as client:
        for query in ("nope=1", "from=yesterday", "limit=3"):
            async with client.get(served.url + "/api/v1/stream?" + query) as response:
                assert response.status == 400, query
                assert_error_shape(await response.json(), 400)


async def test_streams_are_bounded_and_a_closed_one_frees_its_place(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_mod, "MAX_STREAMS", 1)
    async with session() as client:
        first = await client.get(served.url + "/api/v1/stream")
        assert first.status == 200
        await Events(first).rows(1)
        async with client.get(served.url + "/api/v1/stream") as refused:
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "5"
            assert_error_shape(await refused.json(), 429)
        first.close()
        deadline = time.monotonic() + 3
        while True:
            async with client.get(served.url + "/api/v1/stream") as again:
                if again.status == 200:
                    break
                assert again.status == 429
            assert time.monotonic() < deadline, "the stream outlived its client"
            await asyncio.sleep(0.05)


async def test_idle_streams_get_keep_alive_comments(served: Served,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_mod, "KEEPALIVE_S", 0.3)
    async with session() as client, client.get(served.url + "/api/v1/stream") as response:
        events = Events(response)
        await events.rows(len(ROWS))
        await events.quiet(1.0)
        assert events.comments.count("keep-alive") >= 2


async def test_server_shutdown_ends_open_streams_at_once(served: Served) -> None:
    async with session() as client, client.get(served.url + "/api/v1/stream") as response:
        events = Events(response)
        await events.rows(len(ROWS))
        started = time.monotonic()
        await served.runner.cleanup()  # what the worker's stop does
        assert time.monotonic() - started < 3
        assert await events.next(3) is None


# --- Positions on its own ----------------------------------------------------------------------

def test_positions_are_conservative_by_one_refresh_and_bounded() -> None:
    positions = Positions(kept=3)
    positions.note("a", 5)
    assert positions.reached("a") == 4
    positions.note("a", 9)  # the same position seen again later: the lowest holds
    assert positions.reached("a") == 4
    assert positions.reached("unknown") == 0 and positions.reached(None) == 0
    for token in ("b", "c", "d"):
        positions.note(token, 10)
    assert len(positions) == 3 and positions.reached("a") == 0  # the oldest is forgotten
    positions.forget()
    assert positions.reached("d") == 0

