"""GET /api/v1/openapi.json: the document describes exactly the routes the app registers, is
valid OpenAPI 3.1, names the configured table and columns, and real answers match it.

The HTTP tests run the real routes (``routes.register`` on a Faust app that is never started, as
in test_web_limits) on the worker's runner over a real snapshot file created by the snapshot
store itself (so its columns are the real ones: sqlite_schema, RST_ID, late, final) and real SQL
child processes. Each answer, errors included, is checked against the document with
:func:`tests.support.openapi.check_answer`, which tests/integration/test_openapi.py uses on a
live worker too.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
import schemathesis
import yarl
from aiohttp import web as aioweb

from bucket_app.settings import BUCKET_COLUMNS, SQLITE_TYPES, Settings, load
from bucket_app.snapshot.reader import SnapshotStore
from bucket_app.web import dashboard, openapi, schemas
from bucket_app.web.middleware import make_runner
from bucket_app.web.service import Service
from tests.support.openapi import CASES, check_answer, document_of, operations, resolve, validator
from tests.support.settings import SEED_INI, replace_line, write_config
from tests.support.web import build_app, make_settings

# --- the routes the app registers ---------------------------------------------------------------

def router_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route on the app's aiohttp router, HEAD aside."""
    found = set()
    for route in app.web.web_app.router.routes():
        if route.method != "HEAD":
            found.add((route.method, route.resource.canonical))
    return found


# --- the document alone --------------------------------------------------------------------------

@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def built(settings: Settings) -> Iterator[tuple[Any, Service]]:
    app, service = build_app(settings)
    yield app, service
    service.threads.shutdown(wait=False, cancel_futures=True)


def test_every_registered_route_is_described_and_nothing_else(
        built: tuple[Any, Service], settings: Settings) -> None:
    app, _ = built
    document = document_of(settings)
    registered = router_routes(app)
    assert (("GET", openapi.PATH)) in registered
    assert operations(document) == registered
    # aiohttp answers HEAD wherever GET is registered (that is what HEAD routes are here)
    heads = {route.resource.canonical for route in app.web.web_app.router.routes()
             if route.method == "HEAD"}
    assert heads == {path for method, path in registered if method == "GET"}


def test_the_document_is_valid_openapi_3_1(settings: Settings) -> None:
    document = document_of(settings)
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    ids = [op["operationId"] for methods in document["paths"].values()
           for op in methods.values()]
    assert len(ids) == len(set(ids))
    # every $ref resolves
    text = json.dumps(document)
    for ref in set(part.split('"')[0] for part in text.split('"$ref": "')[1:]):
        assert resolve(document, {"$ref": ref}) is not None, ref


def test_every_buckets_option_the_view_takes_is_described(settings: Settings) -> None:
    document = document_of(settings)
    params = [resolve(document, p) for p in document["paths"]["/api/v1/buckets"]["get"][
        "parameters"]]
    names = [p["name"] for p in params]
    assert len(names) == len(set(names))
    assert all(p["description"] for p in params)
    assert {"from", "to", *settings.sqlite_schema, "RST_ID", "late", "final", "limit",
            "format", "granularity", "tz", "group_by", "min_offsets", "wait_ms",
            "X-Min-Offsets", "X-Wait-Ms"} == set(names)


def test_rows_and_tables_are_the_configured_ones(tmp_path: Path) -> None:
    msg_map = {"host": "machine", "meta.region": "region", "n": "level"}
    schema = {"machine": "TEXT", "region": "REAL", "level": "INTEGER",
              "bucket_start": "INTEGER", "bucket_end": "INTEGER", "count": "BIGINT"}
    ini = replace_line(SEED_INI, "sqlite_table", "hits per host")
    settings = load(write_config(tmp_path, ini, msg_map=msg_map, schema=schema), {})
    document = document_of(settings)
    row = document["components"]["schemas"]["Row"]
    assert list(row["properties"]) == [*schema, "RST_ID", "late", "final"]
    assert row["required"] == list(row["properties"])
    assert row["additionalProperties"] is False
    assert row["properties"]["machine"]["type"] == ["string", "null"]
    # a message may put text in a numeric column, and SQLite keeps it as text
    assert row["properties"]["region"]["type"] == ["number", "string", "null"]
    assert row["properties"]["level"]["type"] == ["number", "string", "null"]
    for column in BUCKET_COLUMNS:
        assert row["properties"][column] == {"type": "integer"}
    [table] = document["paths"]["/a/{table}"]["get"]["parameters"][:1]
    assert table["schema"]["enum"] == ["hits per host"]
    rolled = document["components"]["schemas"]["RolledRow"]
    assert set(rolled["properties"]) == {"machine", "region", "level", "bucket_start",
                                         "bucket_end", "count", "late", "final"}
    # real rows of that shape validate, and a row with a column too many or too few does not
    good = {"machine": "a", "region": None, "level": "high", "bucket_start": 0,
            "bucket_end": 20, "count": 3, "RST_ID": 1, "late": 0, "final": 1}
    check = validator(document, {"$ref": "#/components/schemas/Row"})
    assert check.is_valid(good)
    assert not check.is_valid(good | {"server_name": "x"})
    assert not check.is_valid({k: v for k, v in good.items() if k != "final"})
    assert not check.is_valid(good | {"final": 2})


def test_without_a_token_no_route_declares_security(settings: Settings) -> None:
    document = document_of(settings)
    assert "security" not in document
    assert "securitySchemes" not in document["components"]
    for path, methods in document["paths"].items():
        for operation in methods.values():
            assert "401" not in operation["responses"], path


def test_the_affinity_rules_of_sqlite() -> None:
    # sqlite.org/datatype3.html 3.1, with its own surprises: POINT is INTEGER, STRING NUMERIC
    assert [schemas.affinity(t) for t in (
        "INT", "BIGINT", "TEXT", "VARCHAR(9)", "CLOB", "BLOB", "", "REAL", "FLOAT", "DOUBLE",
        "NUMERIC", "DECIMAL(5)", "POINT", "STRING")] == [
        "INTEGER", "INTEGER", "TEXT", "TEXT", "TEXT", "BLOB", "BLOB", "REAL", "REAL", "REAL",
        "NUMERIC", "NUMERIC", "INTEGER", "NUMERIC"]
    for sql_type in SQLITE_TYPES:  # what sqlite_schema allows, checked against SQLite itself
        with sqlite3.connect(":memory:") as conn:
            conn.execute(f"CREATE TABLE t (v {sql_type})")
            conn.execute("INSERT INTO t VALUES ('12'), (3), ('x')")
            kinds = [k for (k,) in conn.execute("SELECT typeof(v) FROM t")]
        expected = {"TEXT": ["text", "text", "text"], "BLOB": ["text", "integer", "text"],
                    "REAL": ["real", "real", "text"]}.get(
            schemas.affinity(sql_type), ["integer", "integer", "text"])
        assert kinds == expected, sql_type


# --- real answers against the document -----------------------------------------------------------

PARTITIONS = 2  # as build_app's reader has


@dataclass
class Served:
    url: str
    document: dict[str, Any]
    service: Service


def make_snapshot(settings: Settings) -> None:
    """The snapshot file as the snapshot store creates it, with rows this test chose."""
    store = SnapshotStore(str(settings.snapshot_path), settings.sqlite_table,
                          settings.bucket_interval_s, list(settings.msg_map.values()),
                          settings.sqlite_schema)
    store.create()
    store.close()
    rows = [(f"s-{i % 3}", None if i % 7 == 0 else "t", 1_700_000_000 + i * 20,
             1_700_000_020 + i * 20, i + 1, 1, i % 2, int(i < 30)) for i in range(60)]
    with sqlite3.connect(settings.snapshot_path) as conn:
        conn.executemany('INSERT INTO "default" VALUES (?, ?, ?, ?, ?, ?, ?, ?)', rows)


async def serve(settings: Settings) -> tuple[aioweb.AppRunner, Served]:
    make_snapshot(settings)
    app, service = build_app(settings)
    service.sql.start()
    runner = make_runner(app.web.web_app)  # type: ignore[attr-defined]
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    auth = {"Authorization": f"Bearer {settings.http_token}"} if settings.http_token else {}
    async with aiohttp.ClientSession() as session, session.get(url + openapi.PATH,
                                                               headers=auth) as answer:
        assert answer.status == 200
        document = await answer.json()
    return runner, Served(url, document, service)


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    extra = getattr(request, "param", {})
    runner, served = await serve(make_settings(tmp_path, **extra))
    try:
        yield served
    finally:
        await runner.cleanup()
        served.service.sql.close()
        served.service.threads.shutdown(wait=False, cancel_futures=True)


async def call(served: Served, method: str, path: str, headers: Mapping[str, str],
               body: Any = None) -> tuple[int, Mapping[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(
            method, yarl.URL(served.url + path, encoded=True), headers=headers,
            data=None if body is None else json.dumps(body).encode(),
            timeout=aiohttp.ClientTimeout(total=30)) as answer:
        return answer.status, answer.headers, await answer.read()


async def test_real_answers_match_the_document(served: Served) -> None:
    document = served.document
    for method, template, path, headers, body, status in CASES:
        got, answer_headers, data = await call(served, method, path, headers, body)
        assert got == status, (method, path, data[:300])
        check_answer(document, method, template, got, answer_headers, data)
    for name in dashboard.load_assets():
        got, answer_headers, data = await call(served, "GET", f"/static/{name}", {})
        check_answer(document, "GET", "/static/{name}", got, answer_headers, data)
    exercised = {(method, template) for method, template, *_ in CASES}
    assert exercised == operations(document)


async def test_the_stream_answers_as_documented(served: Served) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            served.url + "/api/v1/stream?server_name=s-1") as answer:
        first = await asyncio.wait_for(answer.content.readuntil(b"\n\n"), 10)
        check_answer(served.document, "GET", "/api/v1/stream", answer.status, answer.headers,
                     b"")
    assert first.startswith(b"retry:")


async def test_the_document_is_the_settings_one(served: Served) -> None:
    assert served.document == json.loads(json.dumps(document_of(served.service.settings)))


TOKEN = "openapi-test-token"


@pytest.mark.parametrize("served", [{"http_token": TOKEN}], indirect=True)
async def test_with_a_token_401_is_documented_exactly_where_it_is_answered(
        served: Served) -> None:
    # the document itself needs the token too
    got, _, _ = await call(served, "GET", openapi.PATH, {})
    assert got == 401
    _, _, data = await call(served, "GET", openapi.PATH, {"Authorization": f"Bearer {TOKEN}"})
    document = json.loads(data)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    examples = {"table": "default", "sql": "SELECT%201", "name": "index.html"}
    for method, template in sorted(operations(document)):
        path = template.format(**examples)
        got, headers, data = await call(served, method, path, {},
                                        {"sql": "SELECT 1"} if method == "POST" else None)
        operation = document["paths"][template][method.lower()]
        if operation.get("security") == []:
            assert got != 401, template
        else:
            assert got == 401, template
            check_answer(document, method, template, got, headers, data)
        if {"access_token": []} in operation.get("security", []):
            async with aiohttp.ClientSession() as session, session.get(
                    f"{served.url}{path}?access_token={TOKEN}") as answer:
                assert answer.status == 200, template  # the stream: headers only
            async with aiohttp.ClientSession() as session, session.get(
                    f"{served.url}{path}?access_token=wrong") as answer:
                assert answer.status == 401, template


def test_health_documents_degraded_with_its_reason(settings: Settings) -> None:
    health = document_of(settings)["components"]["schemas"]["Health"]
    assert health["properties"]["status"]["enum"] == ["ok", "degraded"]
    assert health["properties"]["reason"]["type"] == "string"
    assert "reason" not in health["required"]  # only while degraded
    skipped = health["properties"]["worker"]["properties"]["skipped"]["description"]
    assert "unknown_schema" in skipped and "avro_mismatch" in skipped
