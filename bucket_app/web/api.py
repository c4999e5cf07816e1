"""GET /api/v1/buckets (filtered counts, rolled up on request) and /api/v1/sql (read-only SQL).

Both answer JSON enveloped with the /health fields (:meth:`Service.status`), or the rows alone
as CSV or NDJSON. Rollups are :mod:`bucket_app.web.rollup`'s.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web as aioweb

from bucket_app.settings import FINAL_COLUMN, LATE_COLUMN, RST_COLUMN, Settings
from bucket_app.sql.pool import EncodedResult
from bucket_app.sql.sandbox import quote_identifier
from bucket_app.web import formats, rollup
from bucket_app.web.declare import Args, Body, Group, Invalid, Param, Route, Schema
from bucket_app.web.middleware import API
from bucket_app.web.params import (
    FORMAT,
    RowFilters,
    filter_params,
    freshness,
    parse_limit,
    row_filters,
)
from bucket_app.web.schemas import (
    RESULT_HEADERS,
    affinity,
    answer,
    envelope,
    mapped_value_schema,
    ref,
    rows_content,
)
from bucket_app.web.service import Freshness, Service

BUCKETS = f"{API}/buckets"
SQL = f"{API}/sql"


def rolled_row_schema(settings: Settings, columns: list[str]) -> Schema:
    """A rolled-up row of /api/v1/buckets: the group_by columns, then the granule's sums."""
    count_type = settings.sqlite_schema["count"]
    properties: dict[str, Schema] = {
        column: mapped_value_schema(settings.sqlite_schema[column]) for column in columns}
    properties |= {
        "bucket_start": {"type": "integer", "description": "the granule's first second"},
        "bucket_end": {"type": "integer", "description": "the second after the granule"},
        # SQLite's sum() is an integer only when every value summed is
        "count": {"type": "integer" if affinity(count_type) in ("INTEGER", "NUMERIC")
                  else "number", "minimum": 0},
        LATE_COLUMN: {"type": "integer", "minimum": 0},
        FINAL_COLUMN: {"type": "integer", "enum": [0, 1],
                       "description": "1 when every bucket in the granule is final"},
    }
    return {"type": "object", "properties": properties,
            "required": ["bucket_start", "bucket_end", "count", LATE_COLUMN, FINAL_COLUMN],
            "additionalProperties": False}


def schemas(settings: Settings, columns: list[str]) -> dict[str, Schema]:
    return {
        "RolledRow": rolled_row_schema(settings, columns),
        "Buckets": envelope({
            "rows": {"type": "array", "items": {"anyOf": [ref("Row"), ref("RolledRow")]}},
            "truncated": {"type": "boolean"},
            "rollup": {
                "type": "object", "required": ["granularity_s", "tz", "group_by"],
                "additionalProperties": False, "description": "present when rolled up",
                "properties": {"granularity_s": {"type": "integer", "minimum": 1},
                               "tz": {"type": "string"},
                               "group_by": {"type": "array", "items": {"enum": columns}}}},
        }, ["rows", "truncated"]),
        "SqlAnswer": envelope({
            "columns": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "array", "items": ref("AnyRow")},
            "truncated": {"type": "boolean"},
            "elapsed_ms": {"type": "number", "minimum": 0},
        }, ["columns", "rows", "truncated", "elapsed_ms"]),
        "SqlRequest": {
            "type": "object", "required": ["sql"],
            "properties": {
                "sql": {"type": "string", "minLength": 1, "pattern": "\\S",
                        "description": "one read-only statement (`q` is accepted too)"},
                "params": {"type": ["array", "object", "null"],
                           "description": "values for `?` (array) or `:name` (object)"}}},
    }


def parse_sql_body(body: Any) -> Args:
    """POST /api/v1/sql's body: {"sql": ..., "params": [...] | {...}}."""
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object with sql and optional params")
    sql = body.get("sql") or body.get("q")
    params = body.get("params")
    if not isinstance(sql, str) or not sql.strip():
        raise Invalid("body needs a non-empty string 'sql'")
    if params is not None and not isinstance(params, list | dict):
        raise Invalid("params must be a JSON array or object")
    return {"sql": sql, "params": params}


def need_sql(args: Args) -> None:
    if "sql" not in args:
        raise Invalid("missing query parameter q")


def bucket_params(service: Service) -> tuple[Param, ...]:
    """/api/v1/buckets' options, then its filters (a column named like an option is not one)."""
    settings = service.settings
    columns = service.mapped_columns
    interval_s = settings.bucket_interval_s
    options = (
        Param("limit", f"at most this many rows (sql_row_limit, {settings.sql_row_limit}, "
              "at most)", {"type": "integer", "minimum": 1}, parse_limit),
        FORMAT,
        Param("granularity", "roll up into granules of this length: `5m`, `1h`, `1d`, or "
              f"seconds; a multiple of bucket_interval ({interval_s} s), at most "
              f"{rollup.MAX_GRANULARITY_S // 86_400}d",
              parse=lambda raw: rollup.parse_granularity(raw, interval_s)),
        Param("tz", "IANA time zone of the granules' local time (`Europe/Berlin`; UTC by "
              "default)", parse=rollup.parse_zone),
        Param("group_by", "comma list of mapped columns to keep when rolling up "
              f"({', '.join(columns)}; all by default, empty for one total per granule); "
              "may repeat", parse=lambda raw: rollup.parse_group_by([raw], columns), many=True),
        *freshness(service.reader.partitions))
    taken = {p.name for p in options}
    filters = filter_params([c for c in [*settings.sqlite_schema, RST_COLUMN, LATE_COLUMN]
                             if c not in taken], [FINAL_COLUMN])
    return options + tuple(p for p in filters if p.name not in taken)


def group(service: Service) -> Group:
    settings = service.settings
    table = quote_identifier(settings.sqlite_table)
    columns = service.mapped_columns

    async def buckets(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        fmt = formats.negotiate(request.headers.get("Accept"), args.get("format"))
        limit = min(args.get("limit", settings.sql_row_limit), settings.sql_row_limit)
        plan = rollup.parse_rollup(args.get("granularity"), args.get("tz"),
                                   args.get("group_by"), settings.bucket_interval_s, columns)
        filters = row_filters(args)
        fresh = Freshness.of(args)
        extra: dict[str, Any] = {}
        if plan is None:
            sql = f"SELECT * FROM {table}{filters.where} ORDER BY bucket_start, rowid LIMIT :limit"
            params = filters.params | filters.time_params | {"limit": limit + 1}
            result = await service.query(request, sql, params, fresh=fresh, row_limit=limit)
        else:
            result = await rolled_up(request, plan, filters, limit, fresh)
            extra["rollup"] = plan.describe()
        body = {"rows": result.rows, "truncated": result.truncated} | extra | service.status()
        return await formats.respond(request, fmt, result, body, service.headers(result))

    async def rolled_up(request: aioweb.Request, plan: rollup.Rollup, filters: RowFilters,
                        limit: int, fresh: Freshness) -> EncodedResult:
        """/api/v1/buckets rolled up, in two queries.

        The first finds the first and last stored bucket the filters select; the granules in
        force there bound the second, which sums whole granules: ``from`` and ``to`` select the
        granules that overlap ``[from, to)``, as they select stored buckets. Buckets that a
        newer snapshot adds outside those bounds between the two queries are left for the next
        answer.
        """
        span = await service.query(
            request, f"SELECT min(bucket_start) AS lo, max(bucket_start) AS hi FROM {table}"
            + filters.where, filters.params | filters.time_params, fresh=fresh)
        [bounds] = formats.decode_rows(span)
        if bounds["lo"] is None:
            names = [*plan.group_by, "bucket_start", "bucket_end", "count", "late", "final"]
            return EncodedResult(names, orjson.Fragment(b"[]"), 0, False, span.elapsed_ms)
        first, last = int(bounds["lo"]), int(bounds["hi"])
        # Probing the zone for its transitions is CPU work proportional to the span: not on
        # the loop.
        granules = await asyncio.to_thread(
            rollup.Granules, plan.zone, plan.granularity_s, first, last)
        lo, end = granules.start_of(first), granules.end_of(granules.start_of(last))
        granules.check_aligned(lo, end, settings.bucket_interval_s)
        params = dict(filters.params)
        sql = rollup.rollup_sql(settings.sqlite_table, plan, granules, lo, end - 1,
                                filters.columns, params, limit + 1)
        return await service.query(request, sql, params, fresh=fresh, row_limit=limit)

    async def sql(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        fmt = formats.negotiate(request.headers.get("Accept"), args.get("format"))
        result = await service.query(request, args["sql"], args.get("params"),
                                     fresh=Freshness.of(args))
        body = {
            "columns": result.columns, "rows": result.rows, "truncated": result.truncated,
            "elapsed_ms": round(result.elapsed_ms, 3),
        } | service.status()
        return await formats.respond(request, fmt, result, body, service.headers(result))

    sql_answer = answer("the rows, enveloped with the /health fields (JSON), or alone",
                        rows_content(ref("SqlAnswer")), RESULT_HEADERS)
    common = (FORMAT, *freshness(service.reader.partitions))
    return Group([
        Route("GET", BUCKETS, "filtered counts; rolled up with granularity, tz or group_by",
              buckets, {"200": answer(
                  "the rows, enveloped with the /health fields (JSON), or alone",
                  rows_content(ref("Buckets")), RESULT_HEADERS)},
              bucket_params(service),
              description="Unknown parameters are 400. Rows are ordered by bucket_start.",
              queries=True, negotiates=True, strict=("unknown filter {name}", "filters")),
        Route("GET", SQL, "one read-only SQL statement", sql, {"200": sql_answer},
              (Param("q", "the statement (needed; `sql` is accepted too)", key="sql",
                     blank_absent=True),
               Param("sql", "the statement, if no q", blank_absent=True), *common),
              queries=True, negotiates=True, errors=(403,), check=need_sql),
        Route("POST", SQL, "one read-only SQL statement with parameters", sql,
              {"200": sql_answer}, common, Body("SqlRequest", parse_sql_body),
              queries=True, negotiates=True, errors=(403,)),
    ], schemas(settings, columns))
