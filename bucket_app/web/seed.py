"""The seed's routes, /a, /c, /r and /rst, and /health.

The seed served these from Flask; their paths and answers are kept so old curl commands work.
/a and /c answer in any format (:mod:`bucket_app.web.formats`); /c takes its format from the
Accept header alone, since its query string is part of the SQL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from aiohttp import web as aioweb

from bucket_app import diskspace
from bucket_app.errors import HttpError
from bucket_app.kafka import brokerlog
from bucket_app.sql.sandbox import quote_identifier
from bucket_app.web import formats
from bucket_app.web.declare import Args, Group, Param, Route, Schema
from bucket_app.web.middleware import json_response
from bucket_app.web.params import FORMAT, freshness, freshness_headers
from bucket_app.web.schemas import (
    ANY_ROW,
    RESULT_HEADERS,
    SNAPSHOT_HEADERS,
    answer,
    envelope,
    json_answer,
    ref,
    row_schema,
    rows_content,
)
from bucket_app.web.service import Freshness, Service

HEALTH: Schema = envelope({
    "status": {"enum": ["ok", "degraded"],
               "description": "degraded: counting waits for something (reason)"},
    "reason": {"type": "string", "description": "with degraded: why, e.g. the schema registry "
               "is unavailable and which partitions wait for it, or which brokers refuse "
               "connections and for how long, or which path a full disk refuses (then the "
               "answer is a 503)"}}, ["status"])
# what web.starting answers while the worker waits for its brokers
STARTING: Schema = {
    "type": "object", "required": ["status", "reason"],
    "description": "/health while the worker waits for its brokers",
    "properties": {"status": {"const": "starting"}, "reason": {"type": "string"}}}


def group(service: Service) -> Group:
    settings = service.settings
    table = settings.sqlite_table
    all_rows_sql = f"SELECT * FROM {quote_identifier(table)}"
    partitions = service.reader.partitions

    async def all_rows(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        fmt = formats.negotiate(request.headers.get("Accept"), args.get("format"))
        if args["table"] != table:
            raise HttpError(404, f"no table {args['table']!r}; this service has {table!r}")
        result = await service.query(request, all_rows_sql, fresh=Freshness.of(args))
        return await formats.respond(request, fmt, result, result.rows,
                                     service.headers(result))

    async def custom(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        fmt = formats.negotiate(request.headers.get("Accept"))
        # The raw path keeps a '?' or '%' that belongs to the SQL; match_info would not.
        raw = request.raw_path.split("/c/", 1)[1] if "/c/" in request.raw_path else args["sql"]
        result = await service.query(request, unquote(raw), fresh=Freshness.of(args))
        return await formats.respond(request, fmt, result, result.rows,
                                     service.headers(result))

    async def reset(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        service.reader.request_refresh()
        return json_response(None, headers=service.headers())

    async def rst_id(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        return json_response(service.reader.state.generation, headers=service.headers())

    async def health(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        degraded = service.degraded()
        reasons = [] if degraded is None else [degraded]
        gone = brokerlog.outages().unreachable()
        if gone:
            reasons.append("brokers unreachable: " + ", ".join(
                f"node {broker} for {seconds:.0f} s" for broker, seconds in sorted(
                    gone.items())))
        full = diskspace.FULL.reasons()  # counting waits for space: 503
        reasons += full
        head: dict[str, Any] = {"status": "degraded", "reason": "; ".join(reasons)} if (
            reasons) else {"status": "ok"}
        return json_response(head | service.status(), status=503 if full else 200,
                             headers={"Retry-After": "1"} if full else None)

    return Group([
        Route("GET", "/a/{table}", "every row of the snapshot table (seed route)", all_rows, {
            "200": answer("every row", rows_content({"type": "array", "items": ref("Row")}),
                          RESULT_HEADERS)},
            (Param("table", "the snapshot table, sqlite_table",
                   {"type": "string", "enum": [table]}, where="path"),
             FORMAT, *freshness(partitions)),
            queries=True, negotiates=True, errors=(404,)),
        Route("GET", "/c/{sql:(?s:.*)}", "the rest of the path, percent-decoded, as one "
              "read-only SQL statement (seed route); the format comes from Accept only",
              custom, {"200": answer("the rows", rows_content({
                  "type": "array", "items": ref("AnyRow")}), RESULT_HEADERS)},
              (Param("sql", "the statement; a query string is part of it", where="path"),
               *freshness_headers(partitions)),
              queries=True, negotiates=True, errors=(403,)),
        Route("GET", "/r", "ask for an immediate snapshot refresh; no count is lost", reset,
              {"200": json_answer("null", {"type": "null"}, SNAPSHOT_HEADERS)}),
        Route("GET", "/rst", "the snapshot generation (the seed's RST_ID)", rst_id,
              {"200": json_answer("the generation", {"type": "integer", "minimum": 0},
                                  SNAPSHOT_HEADERS)}),
        Route("GET", "/health", "status, freshness and the worker's counters", health, {
            "200": json_answer("the status", ref("Health")),
            "503": json_answer("the worker is starting (its brokers are not reachable yet), "
                               "or degraded by a full disk (counting waits for space)",
                               {"anyOf": [ref("Starting"), ref("Health")]}, ["Retry-After"])},
              public=True),
    ], {"Row": row_schema(settings), "AnyRow": ANY_ROW, "Health": HEALTH, "Starting": STARTING})
