"""Checking an HTTP answer against the OpenAPI document, and the answers worth checking.

:func:`document_of` is the document a worker with given settings serves. :func:`check_answer`
fails unless the document describes the operation's status, content type
and headers, and a JSON body validates (JSON Schema 2020-12, ``#/components`` refs resolved in
the document). :data:`CASES` are requests, one or more per operation and errors included, with
the status each must get from the snapshot the web tests serve; the unit tests send them to
the views, tests/integration/test_openapi.py to a live worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import jsonschema_rs
from prometheus_client import CollectorRegistry

from bucket_app.settings import Settings
from bucket_app.web import openapi, routes
from tests.support.web import build_app

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def resolve(document: Mapping[str, Any], node: Any) -> Any:
    """``node`` with its ``$ref`` (a local one, as in this document) followed."""
    while isinstance(node, dict) and "$ref" in node:
        found: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            found = found[part]
        node = found
    return node


def validator(document: Mapping[str, Any], schema: Mapping[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator of ``schema`` whose ``#/components/...`` refs resolve in
    ``document``."""
    return jsonschema_rs.validator_for({
        "$schema": JSON_SCHEMA_DIALECT, "components": document["components"],
        "allOf": [schema]})


def check_answer(document: Mapping[str, Any], method: str, template: str, status: int,
                 headers: Mapping[str, str], body: bytes) -> None:
    """Fail unless the operation documents this status, content type and headers, and a JSON
    body validates against the documented schema."""
    operation = document["paths"][template][method.lower()]
    where = f"{method} {template} -> {status}"
    assert str(status) in operation["responses"], f"{where}: status not documented: {body[:300]!r}"
    answer = resolve(document, operation["responses"][str(status)])
    media = headers.get("Content-Type", "").split(";")[0].strip().lower()
    assert media in answer.get("content", {}), f"{where}: content type {media!r} not documented"
    for name, header in answer.get("headers", {}).items():
        header = resolve(document, header)
        if name not in headers:
            assert not header.get("required"), f"{where}: header {name} missing"
            continue
        errors = [e.message for e in validator(document, header["schema"]).iter_errors(
            headers[name])]
        assert not errors, f"{where}: header {name}={headers[name]!r}: {errors}"
    if media == "application/json":
        schema = answer["content"][media]["schema"]
        errors = [f"{e.message} at {list(e.instance_path)}"
                  for e in validator(document, schema).iter_errors(json.loads(body))]
        assert not errors, f"{where}: {errors[:5]}"


def operations(document: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, methods in document["paths"].items()
            for method in methods}


def document_of(settings: Settings) -> dict[str, Any]:
    """The document a worker with these settings serves (generated from its declarations)."""
    _, service = build_app(settings)
    service.threads.shutdown(wait=False, cancel_futures=True)
    return openapi.build(settings, routes.groups(service, CollectorRegistry()))


def c(sql: str) -> str:
    return "/c/" + quote(sql, safe="")


# (method, template, path and query, headers, JSON body, expected status)
CASES: list[tuple[str, str, str, dict[str, str], Any, int]] = [
    ("GET", "/a/{table}", "/a/default", {}, None, 200),
    ("GET", "/a/{table}", "/a/default?format=csv", {}, None, 200),
    ("GET", "/a/{table}", "/a/default", {"Accept": "application/x-ndjson"}, None, 200),
    ("GET", "/a/{table}", "/a/other", {}, None, 404),
    ("GET", "/a/{table}", "/a/default?format=xml", {}, None, 400),
    ("GET", "/a/{table}", "/a/default", {"Accept": "image/png"}, None, 406),
    ("GET", "/a/{table}", "/a/default?min_offsets=0:999999999&wait_ms=0", {}, None, 503),
    ("GET", "/a/{table}", "/a/default?wait_ms=99999", {}, None, 400),
    ("GET", "/c/{sql}", c('SELECT * FROM "default" WHERE count > 50'), {}, None, 200),
    ("GET", "/c/{sql}", c("SELECT 1 AS one, 2.5 AS x, NULL AS n, x'00ff' AS b"), {}, None, 200),
    ("GET", "/c/{sql}", c("SELECT load_extension('x')"), {}, None, 403),
    ("GET", "/c/{sql}", c("this is not sql"), {}, None, 400),
    ("GET", "/c/{sql}", c("SELECT 1"), {"X-Min-Offsets": "1:999999999", "X-Wait-Ms": "0"},
     None, 503),
    # found by schemathesis: a newline in the SQL was 404, a NUL killed the SQL process (503)
    ("GET", "/c/{sql}", c("SELECT count\nFROM \"default\""), {}, None, 200),
    ("GET", "/c/{sql}", c("SELECT 1\x00"), {}, None, 400),
    ("GET", "/c/{sql}", "/c/" + "x" * 20_000, {}, None, 414),
    ("GET", "/r", "/r", {}, None, 200),
    ("GET", "/rst", "/rst", {}, None, 200),
    ("GET", "/health", "/health", {}, None, 200),
    ("GET", "/health", "/health", {"X-Big": "y" * 9_000}, None, 431),
    ("GET", "/api/v1/buckets", "/api/v1/buckets", {}, None, 200),
    ("GET", "/api/v1/buckets",
     "/api/v1/buckets?server_name=s-1&topic=&from=1700000100&to=2030-01-01T00:00:00Z&limit=3",
     {}, None, 200),
    ("GET", "/api/v1/buckets",
     "/api/v1/buckets?granularity=1h&tz=Europe/Berlin&group_by=server_name", {}, None, 200),
    ("GET", "/api/v1/buckets", "/api/v1/buckets?group_by=&format=ndjson", {}, None, 200),
    ("GET", "/api/v1/buckets", "/api/v1/buckets?RST_ID=1&format=csv", {}, None, 200),
    ("GET", "/api/v1/buckets", "/api/v1/buckets?granularity=7s", {}, None, 400),
    ("GET", "/api/v1/buckets", "/api/v1/buckets?no_such=1", {}, None, 400),
    ("GET", "/api/v1/sql", "/api/v1/sql?q=" + quote('SELECT server_name, sum(count) AS n '
                                                    'FROM "default" GROUP BY 1'), {}, None, 200),
    ("GET", "/api/v1/sql", "/api/v1/sql?sql=SELECT%201&format=csv", {}, None, 200),
    ("GET", "/api/v1/sql", "/api/v1/sql", {}, None, 400),
    ("POST", "/api/v1/sql", "/api/v1/sql",
     {}, {"sql": 'SELECT * FROM "default" WHERE server_name = ?', "params": ["s-2"]}, 200),
    ("POST", "/api/v1/sql", "/api/v1/sql", {}, {"sql": ""}, 400),
    ("POST", "/api/v1/sql", "/api/v1/sql", {}, {"sql": "SELECT 1\x00"}, 400),
    ("POST", "/api/v1/sql", "/api/v1/sql", {}, ["SELECT 1"], 400),
    ("GET", "/metrics", "/metrics", {}, None, 200),
    ("GET", "/api/v1/stream", "/api/v1/stream?no_such=1", {}, None, 400),
    ("GET", "/", "/", {}, None, 200),
    ("GET", "/static/{name}", "/static/no-such.js", {}, None, 404),
    ("GET", "/api/v1/meta", "/api/v1/meta", {}, None, 200),
    ("GET", openapi.PATH, openapi.PATH, {}, None, 200),
]
