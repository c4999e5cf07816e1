"""Schema: the shapes settings declare and the layers above share, with nothing to run.

A message field is named by a dotted path (:func:`split_path`); Avro values are read with a
record schema from an ``.avsc`` file (:func:`load_avro_schema`), refused when a small message
could crash or stall the worker (:func:`schema_hazard`); a snapshot row has the mapped columns,
:data:`BUCKET_COLUMNS` and the columns bucket_app adds (:data:`ADDED_COLUMNS`). It sits at the
bottom with :mod:`bucket_app.errors`: :mod:`bucket_app.settings` validates the settings against
it, :mod:`bucket_app.counting` reads messages by it and :mod:`bucket_app.snapshot` builds its
table from it. Failures are plain ``ValueError``; settings names the file, key and value.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastavro.schema import parse_schema

__all__ = [
    "ADDED_COLUMNS",
    "BUCKET_COLUMNS",
    "FINAL_COLUMN",
    "LATE_COLUMN",
    "RESERVED_COLUMNS",
    "RST_COLUMN",
    "load_avro_schema",
    "schema_hazard",
    "split_path",
]

# The columns of every snapshot row besides the mapped ones, declared in sqlite_schema.
BUCKET_COLUMNS = ("bucket_start", "bucket_end", "count")
# Columns bucket_app adds to every snapshot row: the seed's generation (RST_ID), and the late
# count and the final flag (bucket_app.counting.lifecycle).
RST_COLUMN = "RST_ID"
LATE_COLUMN, FINAL_COLUMN = "late", "final"
ADDED_COLUMNS = (RST_COLUMN, LATE_COLUMN, FINAL_COLUMN)
# No mapped column may take one of these names.
RESERVED_COLUMNS = frozenset({*BUCKET_COLUMNS, *ADDED_COLUMNS})


def split_path(path: str) -> tuple[str, ...] | None:
    """Pre-split a dotted path; ``None`` for a plain key, which needs no walk."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"field path must be a non-empty string, not {path!r}")
    if "." not in path:
        return None
    parts = tuple(path.split("."))
    if "" in parts:
        raise ValueError(f"field path {path!r} has an empty segment")
    return parts


def schema_hazard(schema: Any) -> str | None:
    """Why a parsed record schema would let a small message take the worker down, or None.

    Two shapes do, both refused when the schema is loaded:

    - a recursive type (a record reachable from its own fields): fastavro's compiled reader
      recurses once per level with no depth check, and a small message nested that deep
      crashed the process with SIGSEGV (no exception to catch);
    - an array whose items take no bytes (``null``, an empty record, a ``fixed`` of size 0):
      its block count is a varint, so five bytes make a list of billions of items, each taking
      time and memory to build (docs/performance.md). Items of any other type take a byte each
      at least.
    """
    named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}

    def empty(node: Any, seen: frozenset[str]) -> bool:
        if isinstance(node, str):
            if node in named and node not in seen:
                return empty(named[node], seen | {node})
            return node == "null"
        if not isinstance(node, dict):
            return False  # a union reads its branch index first
        kind = node.get("type")
        if kind in ("record", "error"):
            return all(empty(f.get("type"), seen) for f in node.get("fields", []))
        if kind == "fixed":
            return node.get("size") == 0
        return empty(kind, seen)

    def find(node: Any, where: str, inside: tuple[str, ...]) -> str | None:
        if isinstance(node, list):  # a union
            return next((hit for each in node if (hit := find(each, where, inside))), None)
        if isinstance(node, str):
            if node in inside:
                return f"type {node!r} is recursive (field {where!r})"
            return find(named[node], where, inside) if node in named else None
        if not isinstance(node, dict):
            return None
        kind = node.get("type")
        if kind == "array":
            if empty(node.get("items"), frozenset()):
                return f"field {where!r} is an array of items that take no bytes"
            return find(node.get("items"), where, inside)
        if kind == "map":
            return find(node.get("values"), where, inside)
        if kind in ("record", "error"):
            name = node.get("name")
            inner = (*inside, name) if isinstance(name, str) else inside
            return next((hit for f in node.get("fields", [])
                         if (hit := find(f.get("type"), str(f.get("name")), inner))), None)
        return find(kind, where, inside)

    return find(schema, "?", ())


def load_avro_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and parse an ``.avsc`` file holding one self-contained record schema.

    Raises a plain ``ValueError`` naming the file and the problem; the settings layer
    wraps it into a ``SettingsError``. A non-record top level is refused here rather than
    failing every message later.
    """
    where = os.fspath(path)
    try:
        with open(where, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read Avro schema file {where!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"Avro schema file {where!r} is not UTF-8 text") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Avro schema file {where!r} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise ValueError(f"Avro schema file {where!r} must hold a record schema at the top level")
    try:
        parsed = parse_schema(raw)
    except Exception as exc:  # UnknownType, SchemaParseException, ... carry terse messages
        raise ValueError(
            f"Avro schema file {where!r} is not a valid Avro schema: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(parsed, dict):  # parse_schema of a record is a dict; keep mypy honest
        raise ValueError(f"Avro schema file {where!r} must hold a record schema")
    hazard = schema_hazard(parsed)
    if hazard is not None:
        raise ValueError(f"Avro schema file {where!r} is not supported: {hazard}; a small "
                         "message could crash or stall the worker")
    return parsed
