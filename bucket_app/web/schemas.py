"""The JSON Schemas that answers share, for the route declarations and the OpenAPI document.

A stored snapshot row (its columns with JSON types derived from their SQLite affinity, so the
row schema names the real mapped columns), an SQL row, the status fields of /health and every
JSON envelope, the one error shape (:func:`bucket_app.web.middleware.error_response`), and the
answer headers. An answer's own schema sits with its route (:mod:`bucket_app.web.declare`).
"""

from __future__ import annotations

from collections.abc import Iterable

from bucket_app.settings import BUCKET_COLUMNS, FINAL_COLUMN, LATE_COLUMN, RST_COLUMN, Settings
from bucket_app.web.declare import Schema

NULL: Schema = {"type": "null"}
BOOL_TEXT: Schema = {"type": "string", "enum": ["true", "false"]}
DIGITS: Schema = {"type": "string", "pattern": "^[0-9]+$"}


def ref(name: str, kind: str = "schemas") -> Schema:
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




def status_properties() -> dict[str, Schema]:
    """The fields of :meth:`bucket_app.web.service.Service.status`: /health and every JSON
    envelope carry them."""
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


ANY_ROW: Schema = {"type": "object", "additionalProperties": {
    "type": ["string", "number", "null"],
    "description": "an SQLite value: BLOBs as base64 text, non-finite reals null"}}
ERROR: Schema = {
    "type": "object", "required": ["error", "status"],
    "description": "every error answer; other fields give context (value, limit, position, ...)",
    "properties": {"error": {"type": "string", "minLength": 1},
                   "status": {"type": "integer", "minimum": 400, "maximum": 599}}}


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
            "application/json": {"schema": ref("Error")}}}
        if status == 429:
            answer["headers"] = {"Retry-After": ref("Retry-After", "headers")}
        elif status == 503:
            answer["headers"] = {"Retry-After": ref("Retry-After-Optional", "headers")}
        elif status == 401:
            answer["headers"] = {"WWW-Authenticate": ref("WWW-Authenticate", "headers")}
        found[str(status)] = answer
    return found


def answer(description: str, content: dict[str, Schema],
           header_names: Iterable[str] = ()) -> Schema:
    """An OpenAPI response object with these answer headers."""
    found: Schema = {"description": description, "content": content}
    names = list(header_names)
    if names:
        found["headers"] = {name: ref(name, "headers") for name in names}
    return found


def json_answer(description: str, schema: Schema, header_names: Iterable[str] = ()) -> Schema:
    return answer(description, {"application/json": {"schema": schema}}, header_names)


SNAPSHOT_HEADERS = ("X-RST-ID", "X-Snapshot-Caught-Up", "X-Complete", "X-Position-Token")
RESULT_HEADERS = (*SNAPSHOT_HEADERS, "X-Truncated")
TEXT: Schema = {"schema": {"type": "string"}}


def rows_content(json_schema: Schema) -> dict[str, Schema]:
    """The three formats of the row routes; CSV and NDJSON carry the rows alone."""
    return {"application/json": {"schema": json_schema}, "text/csv": TEXT,
            "application/x-ndjson": TEXT}

