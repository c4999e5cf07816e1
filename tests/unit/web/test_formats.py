"""Answer formats (bucket_app.web.formats): content negotiation, and CSV / NDJSON answers of the
real views that parse back to exactly the rows of the JSON answer, with the same headers, the
truncation marker, and errors that stay JSON.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from bucket_app.errors import HttpError
from bucket_app.web import formats
from bucket_app.web.declare import Invalid
from bucket_app.web.params import parse_format
from tests.support.web import Served, assert_error_shape, client, dst_rows, serve_snapshot, ts

ROW_LIMIT = 50
SNAPSHOT_HEADERS = ("X-RST-ID", "X-Snapshot-Caught-Up", "X-Complete", "X-Position-Token",
                    "X-Truncated")


@pytest.mark.parametrize(("accept", "requested", "chosen"), [
    (None, None, "json"),
    ("", None, "json"),
    ("*/*", None, "json"),
    ("application/json", None, "json"),
    ("text/csv", None, "csv"),
    ("application/x-ndjson", None, "ndjson"),
    ("application/ndjson", None, "ndjson"),
    ("TEXT/CSV; charset=utf-8", None, "csv"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, "json"),
    ("application/json;q=0.5, text/csv", None, "csv"),
    ("text/csv;q=0.2, application/x-ndjson;q=0.9", None, "ndjson"),
    ("text/*", None, "csv"),
    ("*/*;q=0.1, text/csv;q=0", None, "json"),
    ("application/json", "csv", "csv"),  # the parameter wins
    (None, "ndjson", "ndjson"),
    ("text/csv", "json", "json"),
])
def test_negotiate(accept: str | None, requested: str | None, chosen: str) -> None:
    assert formats.negotiate(accept, requested) == chosen


@pytest.mark.parametrize("accept", ["text/html", "text/csv;q=0", "image/png, application/xml"])
def test_negotiate_refuses_with_406(accept: str) -> None:
    with pytest.raises(HttpError) as caught:
        formats.negotiate(accept)
    assert caught.value.status == 406


@pytest.mark.parametrize("requested", ["xml", "", " "])
def test_an_unknown_format_is_invalid(requested: str) -> None:
    with pytest.raises(Invalid):
        parse_format(requested)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The real views over a snapshot of more than ROW_LIMIT rows, with NULLs and a text value
    that needs CSV quoting, and sql_row_limit = ROW_LIMIT."""
    rows = dst_rows(7, ts("2026-10-24T20:00Z"), ts("2026-10-25T20:00Z"), step=1200)
    rows.append(('quote "me", and\nbreak', None, 0, 20, 3, 1, 0, 1))
    async with serve_snapshot(tmp_path, rows, sql_row_limit=str(ROW_LIMIT)) as server:
        yield server


async def fetch(session: aiohttp.ClientSession, url: str, accept: str | None = None,
                data: Any = None) -> tuple[int, Any, bytes]:
    headers = {"Accept": accept} if accept else {}
    method = session.post if data is not None else session.get
    async with method(url, headers=headers, json=data) as answer:
        return answer.status, answer.headers, await answer.read()


def json_rows(body: bytes) -> list[dict[str, Any]]:
    parsed = json.loads(body)
    rows: list[dict[str, Any]] = parsed if isinstance(parsed, list) else parsed["rows"]
    return rows


def as_csv_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [["" if v is None else str(v) for v in row.values()] for row in rows]


def parse_ndjson(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.decode().split("\n")[:-1]]


def same_headers(a: Any, b: Any) -> None:
    for name in SNAPSHOT_HEADERS:
        assert a[name] == b[name], name


# (path, how the format is asked for: "param" or "accept")
ROUTES = [
    ("/a/default", "param"),
    ("/a/default", "accept"),
    ("/c/" + quote("SELECT * FROM default WHERE count > 2 ORDER BY rowid"), "accept"),
    ("/api/v1/buckets?topic=t1", "param"),
    ("/api/v1/buckets?granularity=1h&tz=Europe/Berlin&group_by=topic", "param"),
    ("/api/v1/buckets?granularity=1d&tz=Asia/Kolkata", "accept"),
    ("/api/v1/sql?q=" + quote("SELECT server_name, sum(count) AS n, 1.5 AS x, NULL AS z "
                              "FROM default GROUP BY 1 ORDER BY 1"), "param"),
]


def with_format(path: str, fmt: str) -> str:
    return path + ("&" if "?" in path else "?") + f"format={fmt}"


@pytest.mark.parametrize(("path", "how"), ROUTES)
async def test_csv_and_ndjson_parse_back_to_the_json_rows(served: Served, path: str,
                                                          how: str) -> None:
    async with client() as session:
        status, json_headers, body = await fetch(session, served.url + path)
        assert status == 200, body
        want = json_rows(body)
        assert want, "a test of formats needs rows"
        for fmt, media in (("csv", "text/csv"), ("ndjson", "application/x-ndjson")):
            url = served.url + (with_format(path, fmt) if how == "param" else path)
            status, headers, body = await fetch(session, url, media if how == "accept" else None)
            assert status == 200, body
            assert headers["Content-Type"].startswith(media)
            assert headers["Vary"] == "Accept"
            same_headers(headers, json_headers)
            if fmt == "csv":
                assert headers["Content-Type"] == "text/csv; charset=utf-8; header=present"
                parsed = list(csv.reader(io.StringIO(body.decode(), newline="")))
                assert parsed[0] == list(want[0])
                assert parsed[1:] == as_csv_rows(want)
            else:
                marker = [{"truncated": True, "rows": len(want)}] if (
                    headers["X-Truncated"] == "true") else []
                assert parse_ndjson(body) == want + marker


async def test_post_sql_in_csv(served: Served) -> None:
    sql = {"sql": "SELECT * FROM default WHERE topic = ? ORDER BY rowid", "params": ["t0"]}
    async with client() as session:
        _, _, body = await fetch(session, served.url + "/api/v1/sql", data=sql)
        want = json_rows(body)
        status, headers, body = await fetch(session, served.url + "/api/v1/sql?format=csv",
                                            data=sql)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    parsed = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert parsed == [list(want[0]), *as_csv_rows(want)]


async def test_an_empty_answer_is_a_header_line_or_nothing(served: Served) -> None:
    async with client() as session:
        _, headers, body = await fetch(
            session, served.url + "/api/v1/sql?format=csv&q=SELECT%201%20AS%20a%20WHERE%200")
        assert body == b"a\r\n" and headers["X-Truncated"] == "false"
        _, _, body = await fetch(session, served.url + "/api/v1/buckets?topic=no&format=ndjson")
        assert body == b""


async def test_truncation_at_the_row_limit(served: Served) -> None:
    async with client() as session:
        _, json_headers, body = await fetch(session, served.url + "/a/default")
        want = json_rows(body)
        assert len(want) == ROW_LIMIT and json_headers["X-Truncated"] == "true"
        _, headers, body = await fetch(session, served.url + "/a/default?format=ndjson")
        lines = parse_ndjson(body)
        assert lines[:-1] == want
        assert lines[-1] == {"truncated": True, "rows": ROW_LIMIT}
        assert headers["X-Truncated"] == "true"
        _, headers, body = await fetch(session, served.url + "/a/default?format=csv")
        parsed = list(csv.reader(io.StringIO(body.decode(), newline="")))
        assert parsed[1:] == as_csv_rows(want)  # no marker line; the header says it
        assert headers["X-Truncated"] == "true"
        # a limit below the row limit truncates the same way
        _, headers, body = await fetch(session,
                                       served.url + "/api/v1/buckets?limit=3&format=ndjson")
        lines = parse_ndjson(body)
        assert len(lines) == 4 and lines[-1] == {"truncated": True, "rows": 3}
        # not truncated: no marker
        _, headers, body = await fetch(session, served.url + "/api/v1/buckets?topic=t0&"
                                       "server_name=s0&format=ndjson")
        assert headers["X-Truncated"] == "false"
        assert all("truncated" not in line for line in parse_ndjson(body))


@pytest.mark.parametrize(("path", "accept", "status"), [
    ("/a/default?format=xml", None, 400),
    ("/a/default", "text/html", 406),
    ("/c/SELECT%201", "image/png", 406),
    ("/api/v1/buckets?format=yaml", None, 400),
    ("/api/v1/sql?q=SELECT%201&format=parquet", None, 400),
    # errors of the query itself stay JSON whatever the format asked for
    ("/a/nope?format=csv", None, 404),
    ("/c/" + quote("SELEC nonsense"), "text/csv", 400),
    ("/api/v1/sql?q=" + quote("SELECT * FROM missing") + "&format=ndjson", None, 400),
    ("/api/v1/buckets?granularity=7s&format=csv", None, 400),
])
async def test_bad_formats_and_errors_are_json(served: Served, path: str, accept: str | None,
                                               status: int) -> None:
    async with client() as session:
        got, headers, body = await fetch(session, served.url + path, accept)
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    assert_error_shape(json.loads(body), status)


async def test_c_reads_no_format_parameter(served: Served) -> None:
    """On /c/ the query string belongs to the SQL: ?format=csv there is SQL, not a format."""
    async with client() as session:
        # a literal '?': aiohttp reads format="csv' AS q" as a query parameter, /c/ ignores it
        status, headers, body = await fetch(
            session, served.url + "/c/" + quote("SELECT 'a") + "?format=csv" + quote("' AS q"))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == [{"q": "a?format=csv"}]


def test_a_format_is_read_in_any_case() -> None:
    assert parse_format(" NDJSON ") == "ndjson"
