"""Turn a Kafka message value into a dict: JSON via orjson, or Avro via fastavro.

The agent calls one :class:`Decoder` per message, so everything that can be decided once
(parsing the Avro schema, picking the codec) happens at construction in :func:`make_decoder`
or :func:`load_avro_schema`. Decoders are pure: bytes in, ``dict`` out, and every failure is
a :class:`~bucket_app.errors.DecodeError` with a stable ``reason`` label (``empty``,
``not_json``, ``not_object``, ``avro_mismatch``) that the agent counts and skips. The dict
then goes to :mod:`bucket_app.counting.buckets`, which pulls the event time and the group
columns out of it. Library exceptions never escape: they are re-raised as
``DecodeError(...) from exc``, and messages quote at most the first ~80 bytes of a payload.
"""

from __future__ import annotations

import io
import json
import os
import reprlib
from typing import Any, Final, Protocol

import orjson
from fastavro import schemaless_reader
from fastavro.schema import parse_schema

from bucket_app.errors import DecodeError

__all__ = [
    "AvroDecoder",
    "Decoder",
    "JsonDecoder",
    "load_avro_schema",
    "make_decoder",
    "preview",
]

# How many characters of a bad payload (or of a library's reason) an error message may quote.
PREVIEW_CHARS: Final = 80

# Confluent wire format: magic byte 0x00, then a 4-byte big-endian schema-registry id.
_CONFLUENT_MAGIC: Final = 0
_CONFLUENT_HEADER_BYTES: Final = 5


class Decoder(Protocol):
    """Anything that turns one message value into a dict, raising ``DecodeError`` if it can't."""

    def decode(self, data: bytes | None) -> dict[str, Any]: ...


# A bounded repr: a plain repr() of JSON nested ~1000 deep (orjson reads up to 1024 levels)
# raised RecursionError while we built the error message, which escaped as no BadInput.
_REPR: Final = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = PREVIEW_CHARS


def preview(value: Any) -> str:
    """A bad value for an error message, at most ~PREVIEW_CHARS characters.

    Bytes (a payload) show their start, and their size when cut; anything else (a decoded
    value: bucket_app.counting.buckets quotes bad times with this) a bounded repr.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        text = repr(bytes(value[:PREVIEW_CHARS]))
        if len(value) <= PREVIEW_CHARS and len(text) <= PREVIEW_CHARS:
            return text
        return f"{text[:PREVIEW_CHARS]}... ({len(value)} bytes)"
    text = _REPR.repr(value)
    if len(text) <= PREVIEW_CHARS:
        return text
    return text[:PREVIEW_CHARS] + "..."


def schema_hazard(schema: Any) -> str | None:
    """Why a parsed record schema would let a small message take the worker down, or None.

    Two shapes do, both refused when the schema is loaded:

    - a recursive type (a record reachable from its own fields): fastavro's compiled reader
      recurses once per level with no depth check, and 10 KB of a message nested that deep
      crashed the process with SIGSEGV (no exception to catch);
    - an array whose items take no bytes (``null``, an empty record, a ``fixed`` of size 0):
      its block count is a varint, so five bytes make a list of billions of items (a count of
      10**7 took 0.6 s and ~80 MB). Items of any other type take a byte each at least.
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


def _why(exc: BaseException) -> str:
    """A library error as a short reason; its repr may carry the payload (UnicodeDecodeError)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."


class JsonDecoder:
    """Decode a UTF-8 JSON object with orjson."""

    __slots__ = ()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        # Kafka tombstones arrive as None; an empty value is no more countable.
        if not data:
            raise DecodeError("empty message value", reason="empty")
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(
                f"not JSON ({_why(exc)}): {preview(data)}", reason="not_json"
            ) from exc
        # Exact type check: orjson only ever builds plain dicts, and it is the cheapest test.
        if type(obj) is not dict:
            raise DecodeError(
                f"JSON value is {type(obj).__name__}, not an object: {preview(data)}",
                reason="not_object",
            )
        return obj


class AvroDecoder:
    """Decode Avro with one local schema, framed either schemaless or Confluent-style.

    The schema-registry id in a Confluent frame is ignored: the body is read with the local
    schema, so producers must write with a schema whose binary layout matches it.
    """

    __slots__ = ("schema", "_schema_name")

    def __init__(self, schema: dict[str, Any]) -> None:
        try:
            # parse_schema returns an already-parsed schema as is, so this is cheap then.
            parsed = parse_schema(schema)
        except Exception as exc:  # fastavro raises several unrelated types for bad schemas
            raise ValueError(f"not a valid Avro schema: {exc}") from exc
        if not isinstance(parsed, dict):  # a bare "long" or a union: no record to count
            raise ValueError(f"Avro schema must be a record, not {schema!r:.80}")
        hazard = schema_hazard(parsed)
        if hazard is not None:
            raise ValueError(f"unsupported Avro schema: {hazard}")
        self.schema: dict[str, Any] = parsed
        self._schema_name = str(parsed.get("name", parsed.get("type", "?")))

    def _read_exact(self, buf: io.BytesIO, start: int, end: int) -> Any:
        """Read one datum from ``start``; it must end exactly at ``end``, or it is not ours."""
        buf.seek(start)
        value = schemaless_reader(buf, self.schema, None)
        if buf.tell() != end:
            # A datum of another schema often parses as a prefix of the buffer; leftover
            # bytes are the cheapest sign that the layouts differ.
            raise ValueError(f"datum ended at byte {buf.tell()} of {end}")
        return value

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise DecodeError("empty message value", reason="empty")
        size = len(data)
        buf = io.BytesIO(data)
        value: Any = None
        framed_error: Exception | None = None
        decoded = False
        # A schemaless datum may also start with 0x00 (e.g. an empty first string), so the
        # Confluent reading is only a first guess, and must consume the buffer exactly.
        if data[0] == _CONFLUENT_MAGIC and size > _CONFLUENT_HEADER_BYTES:
            try:
                value = self._read_exact(buf, _CONFLUENT_HEADER_BYTES, size)
                decoded = True
            except Exception as exc:  # fastavro signals corrupt input with many types
                framed_error = exc
        if not decoded:
            try:
                value = self._read_exact(buf, 0, size)
            except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, ValueError...
                tried = f"; as Confluent frame: {_why(framed_error)}" if framed_error else ""
                raise DecodeError(
                    f"value does not match Avro schema {self._schema_name} "
                    f"({_why(exc)}{tried}): {preview(data)}",
                    reason="avro_mismatch",
                ) from exc
        if not isinstance(value, dict):
            raise DecodeError(
                f"Avro schema {self._schema_name} decodes to {type(value).__name__}, not a record",
                reason="not_object",
            )
        return value


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


def make_decoder(avro_schema: dict[str, Any] | None) -> Decoder:
    """JSON when no Avro schema is configured, else Avro with that schema."""
    if avro_schema is None:
        return JsonDecoder()
    return AvroDecoder(avro_schema)
