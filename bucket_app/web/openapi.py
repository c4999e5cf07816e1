"""GET /api/v1/openapi.json: the OpenAPI 3.1 description of every route, built from the settings.

The document is built once, when the views are registered, from the settings and the constants
the views themselves use: the snapshot table's name (the only value ``/a/{table}`` serves), its
columns with JSON types derived from their SQLite affinity (so the row schema names the real
mapped columns), the filters and options of ``/api/v1/buckets`` (:data:`views.BUCKETS_OPTIONS`),
the answer formats (:data:`formats.FORMATS`), the dashboard's asset names, and whether
``http_token`` is set (then every route but the public ones declares the bearer scheme and 401).

Routes are declared here by hand, one :func:`_operations` entry each, not read off the router:
a document read off the router could not be wrong about which routes exist, and so would say
nothing. ``tests/unit/web/test_openapi.py`` holds the two together both ways (every route
registered on the aiohttp router is described, and nothing else is) and validates real answers
against the schemas; ``tests/integration/test_openapi.py`` validates a live worker's answers
and runs schemathesis against it. Errors everywhere have the one shape of
:func:`views.error_response`; a 5xx other than 503 is never described, because it never
happens on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust
from aiohttp import web as aioweb

from bucket_app.settings import (
    BUCKET_COLUMNS,
    FINAL_COLUMN,
    LATE_COLUMN,
    RST_COLUMN,
    Settings,
)
from bucket_app.web import dashboard, formats, rollup, stream, views

__all__ = ["PATH", "build", "register"]

# literal: views imports this module before it defines API
PATH = "/api/v1/openapi.json"
OPENAPI_VERSION = "3.1.0"
# The description of a /api/v1/buckets option this module does not know (the unit test fails).
UNDOCUMENTED = "undocumented"
Schema = dict[str, Any]

NULL: Schema = {"type": "null"}
BOOL_TEXT: Schema = {"type": "string", "enum": ["true", "false"]}
DIGITS: Schema = {"type": "string", "pattern": "^[0-9]+$"}
TIME_TEXT = "epoch seconds (`1700000000`, `1700000000.5`) or ISO-8601 (`2026-11-28T10:00:00Z`)"


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def affinity(sql_type: str) -> str:
    """SQLite's column affinity of a declared type (sqlite.org/datatype3.html, 3.1)."""
    declared = sql_type.upper()
    if "INT" in declared:
        return "INTEGER"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in declared or not declared.strip():
        return "BLOB"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def mapped_value_schema(sql_type: str) -> Schema:
    """A mapped column's JSON values. Messages put text, numbers, booleans (stored as 0/1),
    JSON text of objects, or NULL (field missing) there, and SQLite keeps text that does not
    look like a number as text even in a numeric column; a TEXT column turns numbers to text."""
    if affinity(sql_type) == "TEXT":
        return {"type": ["string", "null"]}
    return {"type": ["number", "string", "null"]}


def bucket_value_schema(sql_type: str) -> Schema:
    """bucket_start, bucket_end or count, which bucket_app writes as whole numbers."""
    kind = affinity(sql_type)
    if kind == "TEXT":
        return {"type": "string", "pattern": "^-?[0-9]+$"}
    if kind == "REAL":
        return {"type": "number"}
    return {"type": "integer"}


def row_schema(settings: Settings) -> Schema:
    """A stored snapshot row: the sqlite_schema columns, then RST_ID, late and final."""
    properties: dict[str, Schema] = {}
    for column, sql_type in settings.sqlite_schema.items():
        properties[column] = (bucket_value_schema(sql_type) if column in BUCKET_COLUMNS
                              else mapped_value_schema(sql_type))
    properties[RST_COLUMN] = {"type": "integer", "minimum": 1,
                              "description": "the snapshot generation that last wrote the row"}
    properties[LATE_COLUMN] = {"type": "integer", "minimum": 0,
                               "description": "messages counted after the bucket was final"}
    properties[FINAL_COLUMN] = {"type": "integer", "enum": [0, 1],
                                "description": "1 once the bucket can no longer grow but "
                                "by late messages (every partition passed its end + grace)"}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def rolled_row_schema(settings: Settings) -> Schema:
    """A rolled-up row of /api/v1/buckets: the group_by columns, then the granule's sums."""
    count_type = settings.sqlite_schema["count"]
    properties: dict[str, Schema] = {
        column: mapped_value_schema(settings.sqlite_schema[column])
        for column in views.mapped_columns(settings)}
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


def status_properties() -> dict[str, Schema]:
    """The fields of :meth:`views.Service.status`: /health and every JSON envelope carry them."""
    count = {"type": "integer", "minimum": 0}
    partitions = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    return {
        "rst_id": {"type": "integer", "minimum": 0,
                   "description": "the snapshot generation (0: no snapshot yet)"},
        "snapshot_age_s": {"type": ["number", "null"],
                           "description": "seconds since the last refresh; null before one"},
        "caught_up": {"type": "boolean",
                      "description": "the snapshot holds the whole changelog as of its last "
                      "refresh"},
        "complete": {"type": "boolean",
                     "description": "caught up, and every message produced so far is counted"},
        "closing_time": {"type": ["number", "null"],
                         "description": "buckets ending at or before this minus grace are "
                         "final; null while none is"},
        "token": {"type": "string",
                  "description": "position token: send it back as min_offsets to read your "
                  "writes"},
        "partitions": {
            "type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
            "description": "per source partition, what the snapshot reflects",
            "additionalProperties": {
                "type": "object", "required": ["offset", "watermark", "lag"],
                "additionalProperties": False,
                "properties": {
                    "offset": {"type": "integer", "minimum": -1,
                               "description": "last source offset reflected (-1: none)"},
                    "watermark": {"type": ["number", "null"],
                                  "description": "highest event time counted"},
                    "lag": {"type": ["integer", "null"], "minimum": 0,
                            "description": "messages produced but not reflected yet"},
                }}},
        "worker": {
            "type": "object", "description": "the answering worker since it started",
            "required": ["ready", "batches", "counted", "replayed", "late", "dead_letters",
                         "skipped"],
            "properties": {
                "ready": {"type": "boolean", "description": "its tables are recovered"},
                "assigned": partitions, "paused": partitions, "fetching": partitions,
                "batches": count, "counted": count, "replayed": count,
                "late": {**count, "description": "messages counted into a final bucket"},
                "dead_letters": {**count, "description": "skipped messages sent to "
                                 "dead_letter_topic"},
                "skipped": {"type": "object", "additionalProperties": count,
                            "description": "bad input skipped, by reason: empty, "
                            "not_json, not_object, avro_mismatch, unknown_schema, "
                            "missing_time, bad_time, future_time, bad_field, expired"},
            }},
    }


def envelope(properties: dict[str, Schema], required: list[str]) -> Schema:
    status = status_properties()
    return {"type": "object", "properties": properties | status,
            "required": required + list(status), "additionalProperties": False}


def schemas(settings: Settings) -> dict[str, Schema]:
    any_value = {"type": ["string", "number", "null"],
                 "description": "an SQLite value: BLOBs as base64 text, non-finite reals null"}
    return {
        "Error": {
            "type": "object", "required": ["error", "status"],
            "description": "every error answer; other fields give context (value, limit, "
            "position, ...)",
            "properties": {"error": {"type": "string", "minLength": 1},
                           "status": {"type": "integer", "minimum": 400, "maximum": 599}}},
        "Row": row_schema(settings),
        "RolledRow": rolled_row_schema(settings),
        "AnyRow": {"type": "object", "additionalProperties": any_value},
        "Health": envelope({
            "status": {"enum": ["ok", "degraded"],
                       "description": "degraded: counting waits for something (reason)"},
            "reason": {"type": "string", "description": "with degraded: why, e.g. the "
                       "schema registry is unavailable and which partitions wait for it, "
                       "or which brokers refuse connections and for how long, or which "
                       "path a full disk refuses (then the answer is a 503)"}},
            ["status"]),
        "Starting": {
            "type": "object", "required": ["status", "reason"],
            "description": "/health while the worker waits for its brokers",
            "properties": {"status": {"const": "starting"}, "reason": {"type": "string"}}},
        "Buckets": envelope({
            "rows": {"type": "array", "items": {"anyOf": [
                _ref("schemas", "Row"), _ref("schemas", "RolledRow")]}},
            "truncated": {"type": "boolean"},
            "rollup": {
                "type": "object", "required": ["granularity_s", "tz", "group_by"],
                "additionalProperties": False, "description": "present when rolled up",
                "properties": {"granularity_s": {"type": "integer", "minimum": 1},
                               "tz": {"type": "string"},
                               "group_by": {"type": "array", "items": {
                                   "enum": views.mapped_columns(settings)}}}},
        }, ["rows", "truncated"]),
        "SqlAnswer": envelope({
            "columns": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "array", "items": _ref("schemas", "AnyRow")},
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
        "Meta": {
            "type": "object", "required": ["table", "columns", "bucket_interval_s"],
            "properties": {
                "table": {"const": settings.sqlite_table},
                "columns": {"type": "array", "items": {"type": "string"}},
                "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                "bucket_interval_s": {"const": settings.bucket_interval_s},
                "granularities": {"type": "object",
                                  "additionalProperties": {"type": "integer"}},
                "auth": {"type": "boolean"},
                "stream": {"type": "string"},
                "rollup": {"type": "boolean"}}},
        "OpenApi": {"type": "object", "required": ["openapi", "info", "paths"]},
    }


def headers() -> dict[str, Schema]:
    def header(description: str, schema: Schema, required: bool = True) -> Schema:
        return {"description": description, "required": required, "schema": schema}

    return {
        "X-RST-ID": header("the snapshot generation the answer was read from", DIGITS),
        "X-Snapshot-Caught-Up": header("the snapshot holds the whole changelog", BOOL_TEXT),
        "X-Complete": header("caught up, and every message produced is counted", BOOL_TEXT),
        "X-Position-Token": header("position token (min_offsets to read your writes)",
                                   {"type": "string"}),
        "X-Truncated": header("the rows were cut at sql_row_limit (or limit)", BOOL_TEXT),
        "Retry-After": header("seconds to wait before trying again", DIGITS),
        "Retry-After-Optional": header("seconds to wait before trying again", DIGITS, False),
        "WWW-Authenticate": header("`Bearer`", {"const": "Bearer"}),
    }


ERRORS = {
    400: "bad request: a parameter, the SQL, or the request itself is refused",
    401: "no bearer token, or a wrong one (http_token is set)",
    403: "the SQL authorizer refused the statement",
    404: "no such table, route or file",
    406: "the Accept header allows none of the formats",
    414: "the URL is longer than 16 KiB",
    429: "too many queries (or streams) from this client",
    431: "a request header is longer than 8 KiB",
    503: "the snapshot is not ready or behind min_offsets, too many queries from everyone, "
         "or the query's SQL process failed",
}


def responses() -> dict[str, Schema]:
    found: dict[str, Schema] = {}
    for status, description in ERRORS.items():
        answer: Schema = {"description": description, "content": {
            "application/json": {"schema": _ref("schemas", "Error")}}}
        if status == 429:
            answer["headers"] = {"Retry-After": _ref("headers", "Retry-After")}
        elif status == 503:
            answer["headers"] = {"Retry-After": _ref("headers", "Retry-After-Optional")}
        elif status == 401:
            answer["headers"] = {"WWW-Authenticate": _ref("headers", "WWW-Authenticate")}
        found[str(status)] = answer
    return found


def parameters() -> dict[str, Schema]:
    def query(name: str, description: str, schema: Schema) -> Schema:
        return {"name": name, "in": "query", "required": False, "description": description,
                "schema": schema}

    # views read ``query or header``: an empty value counts as absent
    wait_ms = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": views.MAX_WAIT_MS},
                         {"const": ""}], "default": views.DEFAULT_WAIT_MS}
    return {
        "format": query("format", "answer format; without it the Accept header decides "
                        "(application/json, text/csv, application/x-ndjson), JSON by default",
                        {"type": "string", "enum": list(formats.FORMATS)}),
        "min_offsets": query("min_offsets", "answer only from a snapshot reflecting these "
                             "source offsets: a position token or `p:offset[,p:offset...]`",
                             {"type": "string"}),
        "wait_ms": query("wait_ms", "how long to wait for min_offsets before 503 (empty: "
                         "as if absent)", wait_ms),
        "X-Min-Offsets": {"name": views.MIN_OFFSETS_HEADER, "in": "header", "required": False,
                          "description": "min_offsets as a header (the query parameter wins)",
                          "schema": {"type": "string"}},
        "X-Wait-Ms": {"name": "X-Wait-Ms", "in": "header", "required": False,
                      "description": "wait_ms as a header (the query parameter wins)",
                      "schema": wait_ms},
        "from": query("from", f"buckets ending after this: {TIME_TEXT}", {"type": "string"}),
        "to": query("to", f"buckets starting before this: {TIME_TEXT}", {"type": "string"}),
    }


def bucket_options(settings: Settings) -> dict[str, Schema]:
    """/api/v1/buckets' own parameters, by name (those in views.BUCKETS_OPTIONS are used)."""
    columns = views.mapped_columns(settings)
    return {
        "limit": {"type": "integer", "minimum": 1,
                  "description": f"at most this many rows (sql_row_limit, "
                  f"{settings.sql_row_limit}, at most)"},
        "granularity": {"type": "string",
                        "description": "roll up into granules of this length: `5m`, `1h`, "
                        f"`1d`, or seconds; a multiple of bucket_interval "
                        f"({settings.bucket_interval_s} s), at most "
                        f"{rollup.MAX_GRANULARITY_S // 86_400}d"},
        "tz": {"type": "string", "description": "IANA time zone of the granules' local time "
               "(`Europe/Berlin`; UTC by default)"},
        "group_by": {"type": "string",
                     "description": "comma list of mapped columns to keep when rolling up "
                     f"({', '.join(columns)}; all by default, empty for one total per "
                     "granule); may repeat"},
        "final": {"type": "string", "enum": ["true", "false"],
                  "description": "only buckets that are final (true) or still open (false)"},
    }


def _param(name: str) -> Schema:
    return _ref("parameters", name)


def _answer(description: str, content: dict[str, Schema],
            header_names: Iterable[str] = ()) -> Schema:
    answer: Schema = {"description": description, "content": content}
    names = list(header_names)
    if names:
        answer["headers"] = {name: _ref("headers", name) for name in names}
    return answer


SNAPSHOT_HEADERS = ("X-RST-ID", "X-Snapshot-Caught-Up", "X-Complete", "X-Position-Token")
RESULT_HEADERS = (*SNAPSHOT_HEADERS, "X-Truncated")
TEXT = {"schema": {"type": "string"}}


def rows_content(json_schema: Schema) -> dict[str, Schema]:
    """The three formats of the row routes; CSV and NDJSON carry the rows alone."""
    return {"application/json": {"schema": json_schema}, "text/csv": TEXT,
            "application/x-ndjson": TEXT}


def _operations(settings: Settings, asset_names: list[str]) -> dict[str, dict[str, Schema]]:
    """Every route: path -> method -> operation, without the errors every route shares."""
    sql_params = [_param("min_offsets"), _param("wait_ms"), _param("X-Min-Offsets"),
                  _param("X-Wait-Ms")]
    options = bucket_options(settings)
    filters = [{"name": column, "in": "query", "required": False, "schema": {"type": "string"},
                "description": f"rows whose {column} equals this (empty: NULL)"}
               for column in [*settings.sqlite_schema, RST_COLUMN]]
    buckets_params = [_param("from"), _param("to"), *filters]
    for name in views.BUCKETS_OPTIONS:
        if name in ("min_offsets", "wait_ms", "format"):
            buckets_params.append(_param(name))
            continue
        spec = dict(options.get(name, {"type": "string", "description": UNDOCUMENTED}))
        buckets_params.append({"name": name, "in": "query", "required": False,
                               "description": spec.pop("description"), "schema": spec})
    buckets_params += [_param("X-Min-Offsets"), _param("X-Wait-Ms")]
    sql_answer = _answer("the rows, enveloped with the /health fields (JSON), or alone",
                         rows_content(_ref("schemas", "SqlAnswer")), RESULT_HEADERS)
    table = settings.sqlite_table
    stream_filters = [{"name": column, "in": "query", "required": False,
                       "schema": {"type": "string"},
                       "description": f"rows whose {column} equals this (empty: NULL)"}
                      for column in settings.sqlite_schema]
    return {
        "/a/{table}": {"get": {
            "summary": "every row of the snapshot table (seed route)",
            "parameters": [{"name": "table", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": [table]},
                            "description": "the snapshot table, sqlite_table"},
                           _param("format"), *sql_params],
            "responses": {"200": _answer(
                "every row", rows_content({"type": "array", "items": _ref("schemas", "Row")}),
                RESULT_HEADERS), "404": _ref("responses", "404")}}},
        "/c/{sql}": {"get": {
            "summary": "the rest of the path, percent-decoded, as one read-only SQL statement "
                       "(seed route); the format comes from Accept only",
            "parameters": [{"name": "sql", "in": "path", "required": True,
                            "schema": {"type": "string"},
                            "description": "the statement; a query string is part of it"},
                           _param("X-Min-Offsets"), _param("X-Wait-Ms")],
            "responses": {"200": _answer(
                "the rows", rows_content({"type": "array", "items": _ref("schemas", "AnyRow")}),
                RESULT_HEADERS), "403": _ref("responses", "403")}}},
        "/r": {"get": {
            "summary": "ask for an immediate snapshot refresh; no count is lost",
            "responses": {"200": _answer("null", {"application/json": {"schema": NULL}},
                                         SNAPSHOT_HEADERS)}}},
        "/rst": {"get": {
            "summary": "the snapshot generation (the seed's RST_ID)",
            "responses": {"200": _answer("the generation", {"application/json": {"schema": {
                "type": "integer", "minimum": 0}}}, SNAPSHOT_HEADERS)}}},
        "/health": {"get": {
            "summary": "status, freshness and the worker's counters",
            "responses": {
                "200": _answer("the status", {"application/json": {
                    "schema": _ref("schemas", "Health")}}),
                "503": _answer("the worker is starting (its brokers are not reachable yet), "
                               "or degraded by a full disk (counting waits for space)",
                               {"application/json": {"schema": {"anyOf": [
                                   _ref("schemas", "Starting"), _ref("schemas", "Health")]}}},
                               ["Retry-After"])}}},
        f"{views.API}/buckets": {"get": {
            "summary": "filtered counts; rolled up with granularity, tz or group_by",
            "description": "Unknown parameters are 400. Rows are ordered by bucket_start.",
            "parameters": buckets_params,
            "responses": {"200": _answer(
                "the rows, enveloped with the /health fields (JSON), or alone",
                rows_content(_ref("schemas", "Buckets")), RESULT_HEADERS)}}},
        f"{views.API}/sql": {
            "get": {
                "summary": "one read-only SQL statement",
                "parameters": [
                    {"name": "q", "in": "query", "required": False,
                     "schema": {"type": "string"},
                     "description": "the statement (needed; `sql` is accepted too)"},
                    {"name": "sql", "in": "query", "required": False,
                     "schema": {"type": "string"}, "description": "the statement, if no q"},
                    _param("format"), *sql_params],
                "responses": {"200": sql_answer, "403": _ref("responses", "403")}},
            "post": {
                "summary": "one read-only SQL statement with parameters",
                "parameters": [_param("format"), *sql_params],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("schemas", "SqlRequest")}}},
                "responses": {"200": sql_answer, "403": _ref("responses", "403")}}},
        "/metrics": {"get": {
            "summary": "the worker's counters and gauges, Prometheus text format",
            "responses": {"200": {"description": "the metrics", "content": {
                "text/plain": TEXT}}}}},
        stream.PATH: {"get": {
            "summary": "Server-Sent Events: a `row` event per row each refresh changed; "
                       "the last of a refresh has the position token as its id",
            "parameters": [
                _param("from"), _param("to"), *stream_filters,
                {"name": "last_event_id", "in": "query", "required": False,
                 "schema": {"type": "string"}, "description": "as the Last-Event-ID header"},
                {"name": "access_token", "in": "query", "required": False,
                 "schema": {"type": "string"},
                 "description": "the http_token, for clients that cannot set a header"},
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "string"},
                 "description": "the id of the last event received: only later changes"}],
            "responses": {"200": {"description": "an endless event stream", "content": {
                "text/event-stream": TEXT}}}}},
        "/": {"get": {
            "summary": "the dashboard page",
            "responses": {"200": {"description": "HTML", "content": {"text/html": TEXT}}}}},
        f"{dashboard.STATIC_PREFIX}{{name}}": {"get": {
            "summary": "one of the dashboard's assets",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": asset_names}}],
            "responses": {
                "200": {"description": "the file", "content": {
                    kind: TEXT for kind in sorted(set(dashboard.TYPES.values()))}},
                "404": _ref("responses", "404")}}},
        f"{views.API}/meta": {"get": {
            "summary": "what the dashboard needs first: table, mapped columns, interval",
            "responses": {"200": _answer("the service's shape", {"application/json": {
                "schema": _ref("schemas", "Meta")}})}}},
        PATH: {"get": {
            "summary": "this document",
            "responses": {"200": _answer("OpenAPI 3.1", {"application/json": {
                "schema": _ref("schemas", "OpenApi")}})}}},
    }


# Errors by what a route does: every route can meet the parser's; SQL routes the rest.
PARSER_ERRORS = ("400", "414", "431")
QUERY_ERRORS = ("400", "429", "503")
FORMAT_ERRORS = ("406",)


def build(settings: Settings, asset_names: Iterable[str] = ()) -> dict[str, Any]:
    """The OpenAPI document of a worker with these settings."""
    paths = _operations(settings, sorted(asset_names))
    sql_paths = {"/a/{table}", "/c/{sql}", f"{views.API}/buckets", f"{views.API}/sql"}
    format_paths = sql_paths  # /c negotiates from Accept alone, the others from format too
    for path, methods in paths.items():
        for method, operation in methods.items():
            errors = list(PARSER_ERRORS)
            if path in sql_paths:
                errors += QUERY_ERRORS
            if path in format_paths:
                errors += FORMAT_ERRORS
            if path == stream.PATH:
                errors += ["429", "503"]
            public = path in views.PUBLIC_PATHS or path.startswith(views.PUBLIC_PREFIX)
            if public:
                operation["security"] = []
            elif settings.http_token is not None:
                errors.append("401")
                if path in views.QUERY_TOKEN_PATHS:
                    operation["security"] = [{"bearer": []}, {"access_token": []}]
            answers = operation["responses"]
            for status in sorted(set(errors)):
                answers.setdefault(status, _ref("responses", status))
            operation["responses"] = dict(sorted(answers.items()))
            words = [w.strip("{}") for w in path.replace(".", "_").split("/") if w]
            operation["operationId"] = "_".join([method, *(words or ["index"])])
    components: dict[str, Any] = {
        "schemas": schemas(settings), "parameters": parameters(),
        "headers": headers(), "responses": responses()}
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "bucket_app",
            "version": _version(),
            "description": (
                f"Counts of topic `{settings.topic}` in {settings.bucket_interval_s}-second "
                f"buckets, table `{settings.sqlite_table}`, grouped by "
                f"{', '.join(views.mapped_columns(settings)) or 'nothing'}. Every error is "
                "`{\"error\": str, \"status\": int, ...}`, a 4xx or a 503."),
        },
        "paths": paths,
        "components": components,
    }
    if settings.http_token is not None:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "access_token": {"type": "apiKey", "in": "query", "name": "access_token",
                             "description": "the token as a query parameter, where a client "
                             "cannot set a header (a browser's EventSource)"}}
        document["security"] = [{"bearer": []}]
    return document


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bucket_app")
    except metadata.PackageNotFoundError:
        return "0"


def register(app: Any, settings: Settings, service: Any) -> None:
    """Add GET /api/v1/openapi.json; the document is built once, now."""
    document = build(settings, dashboard.load_assets())
    body = views.json_response(document).body

    @app.page(PATH)
    class OpenApi(faust.web.View):
        """GET /api/v1/openapi.json: the OpenAPI description of this worker's routes."""

        async def get(self, request: Any) -> aioweb.Response:
            return aioweb.Response(body=body, content_type=views.JSON_TYPE)

    del OpenApi
