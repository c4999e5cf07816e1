"""Turn a Kafka message value into a dict: JSON via orjson, or Avro via fastavro.

With a schema registry (:class:`RegistryDecoder`), a Confluent-framed value (byte 0, then the
4-byte id of its writer schema) is read with that writer schema, resolved against the reader
schema by Avro's rules (fields added with defaults, removed, promoted, renamed with aliases).
The writer schemas are handed in, already fetched (:class:`WriterSchema`, parsed by
:func:`writer_schema`): this module never asks the registry, and an id missing from what it was
handed is a broken invariant (:class:`SchemaNotFetched`), not bad input. A value framed by
Confluent's JSON Schema serializer (byte 0, an id, then JSON) is read as JSON, with or without
a registry.

The agent calls one :class:`Decoder` per message, so everything that can be decided once
(parsing the Avro schema, picking the codec) happens at construction in :func:`make_decoder`
or, for the schema file, :func:`bucket_app.schema.load_avro_schema` (re-exported here).
Decoders are pure: bytes in, ``dict`` out, and every failure is a
:class:`~bucket_app.errors.DecodeError` with a stable ``reason`` label (``empty``, ``not_json``,
``not_object``, ``avro_mismatch``, ``unknown_schema``) that the agent counts and skips. The dict
then goes to :mod:`bucket_app.counting.buckets`, which pulls the event time and the group
columns out of it. Library exceptions never escape: they are re-raised as
``DecodeError(...) from exc``, and messages quote at most the first ~80 bytes of a payload.
"""

from __future__ import annotations

import io
import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
from fastavro import schemaless_reader
from fastavro.schema import parse_schema

from bucket_app.errors import DecodeError
from bucket_app.schema import load_avro_schema, schema_hazard

__all__ = [
    "AvroDecoder",
    "Decoder",
    "JsonDecoder",
    "RegistryDecoder",
    "SchemaNotFetched",
    "WriterSchema",
    "framed_ids",
    "missing_field",
    "writer_schema",
    "load_avro_schema",
    "make_decoder",
    "preview",
    "schema_hazard",
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


def _why(exc: BaseException) -> str:
    """A library error as a short reason; its repr may carry the payload (UnicodeDecodeError)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."


class JsonDecoder:
    """Decode a UTF-8 JSON object with orjson; a Confluent JSON Schema frame is stepped over
    (no JSON text starts with byte 0, so the frame cannot be mistaken)."""

    __slots__ = ()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        # Kafka tombstones arrive as None; an empty value is no more countable.
        if not data:
            raise DecodeError("empty message value", reason="empty")
        body = data
        if data[0] == _CONFLUENT_MAGIC and len(data) > _CONFLUENT_HEADER_BYTES:
            body = data[_CONFLUENT_HEADER_BYTES:]
        try:
            obj = orjson.loads(body)
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


AVRO, JSON, UNKNOWN, UNUSABLE = "avro", "json", "unknown", "unusable"


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """What the registry holds under one schema id, as decoding needs it.

    ``kind`` is ``avro`` (``schema`` is the parsed writer schema), ``json`` (a JSON Schema:
    the value is JSON), ``unknown`` (the registry does not know the id) or ``unusable`` (a
    schema we cannot read values with; ``why`` says why).
    """

    schema_id: int
    kind: str
    schema: dict[str, Any] | None = None
    why: str = ""


class SchemaNotFetched(Exception):  # noqa: N818 - not bad input: a broken invariant
    """A framed value's schema id was not fetched before the value was decoded.

    Deliberately not a :class:`~bucket_app.errors.BadInput`: the intake fetches every id of a
    batch before it is counted, so this is a bug, and a record must never be skipped for it.
    """


def framed_ids(values: Any) -> set[int]:
    """The schema ids of the Confluent-framed values among ``values``."""
    heads = {value[1:5] for value in values
             if value and value[0] == _CONFLUENT_MAGIC and len(value) >= _CONFLUENT_HEADER_BYTES}
    return {int.from_bytes(head, "big") for head in heads}


def writer_schema(schema_id: int, schema_type: str | None, text: str) -> WriterSchema:
    """The registry's answer for ``schema_id`` (its ``schemaType``, absent for Avro, and the
    schema text) as a :class:`WriterSchema`; never raises."""
    kind = (schema_type or "AVRO").upper()
    if kind == "JSON":
        return WriterSchema(schema_id, JSON)
    if kind != "AVRO":
        return WriterSchema(schema_id, UNUSABLE, why=f"schema type {kind} is not Avro or JSON")
    try:
        raw = json.loads(text)
        parsed = parse_schema(raw, named_schemas={})
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        return WriterSchema(schema_id, UNUSABLE, why=f"not a valid Avro schema: {_why(exc)}")
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return WriterSchema(schema_id, UNUSABLE, why="not a record schema")
    hazard = schema_hazard(parsed)
    if hazard is not None:
        return WriterSchema(schema_id, UNUSABLE, why=f"unsupported: {hazard}")
    return WriterSchema(schema_id, AVRO, parsed)


def missing_field(schema: dict[str, Any], path: str) -> bool:
    """Whether the dotted ``path`` names no field of the record ``schema`` (a parsed one):
    each step a field of a record, or of the record branch of a union such as
    ``["null", record]``."""
    named = schema.get("__named_schemas", {})

    def records(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, str):
            node = named.get(node)
        if isinstance(node, list):
            return [found for branch in node for found in records(branch)]
        if isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error"):
                return [node]
            return records(kind) if isinstance(kind, dict | list | str) else []
        return []

    nodes: list[Any] = [schema]
    for part in path.split("."):
        nodes = [field["type"] for node in nodes for record in records(node)
                 for field in record.get("fields", []) if field.get("name") == part]
        if not nodes:
            return True
    return False


class RegistryDecoder:
    """Decode values written with a schema registry's serializers.

    A Confluent-framed value is read with the writer schema of its id, resolved against the
    reader schema (``reader``; None: values are JSON). Unframed values are read with the
    reader schema alone, as :class:`AvroDecoder` (or :class:`JsonDecoder`) would. ``writers``
    is filled by whoever talks to the registry, before the values are decoded.
    """

    __slots__ = ("reader", "writers", "_avro", "_json", "_reader_name")

    def __init__(self, reader: dict[str, Any] | None,
                 writers: Mapping[int, WriterSchema]) -> None:
        self._avro = AvroDecoder(reader) if reader is not None else None
        self.reader = None if self._avro is None else self._avro.schema
        self._reader_name = "" if self._avro is None else self._avro._schema_name
        self._json = JsonDecoder()
        self.writers = writers

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if not data or data[0] != _CONFLUENT_MAGIC or len(data) < _CONFLUENT_HEADER_BYTES:
            return self._json.decode(data) if self._avro is None else self._avro.decode(data)
        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_BYTES], "big")
        writer = self.writers.get(schema_id)
        if writer is None:
            raise SchemaNotFetched(f"schema id {schema_id} was not fetched before decoding")
        kind = writer.kind
        if kind == UNKNOWN:
            raise DecodeError(f"schema id {schema_id} is not in the schema registry: "
                              f"{preview(data)}", reason="unknown_schema")
        if kind == JSON:
            if self._avro is not None:
                raise DecodeError(f"writer schema id {schema_id} is a JSON Schema; values are "
                                  f"read as Avro: {preview(data)}", reason="avro_mismatch")
            return self._json.decode(data)
        if kind == UNUSABLE:
            raise DecodeError(f"writer schema id {schema_id} is {writer.why}: {preview(data)}",
                              reason="avro_mismatch")
        if self._avro is None:
            raise DecodeError(f"writer schema id {schema_id} is Avro; values are read as JSON: "
                              f"{preview(data)}", reason="not_json")
        buf = io.BytesIO(data)
        buf.seek(_CONFLUENT_HEADER_BYTES)
        try:
            value = schemaless_reader(buf, writer.schema, self.reader)  # type: ignore[arg-type]
            if buf.tell() != len(data):
                raise ValueError(f"datum ended at byte {buf.tell()} of {len(data)}")
        except Exception as exc:  # SchemaResolutionError, EOFError, UnicodeDecodeError...
            raise DecodeError(
                f"value does not match writer schema id {schema_id} read as "
                f"{self._reader_name} ({_why(exc)}): {preview(data)}", reason="avro_mismatch",
            ) from exc
        if not isinstance(value, dict):
            raise DecodeError(f"writer schema id {schema_id} decodes to "
                              f"{type(value).__name__}, not a record", reason="not_object")
        return value


def make_decoder(avro_schema: dict[str, Any] | None) -> Decoder:
    """JSON when no Avro schema is configured, else Avro with that schema."""
    if avro_schema is None:
        return JsonDecoder()
    return AvroDecoder(avro_schema)
