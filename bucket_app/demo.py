"""Demo messages that settings count: :class:`DemoMessages`, for ``bucket-app produce``.

Message ``i`` is a pure function of ``i``, its event time and the instance (whose Avro fields
that no setting names are generated once, by fastavro, per run): JSON with the mapped fields
and the time field set, or an Avro record of the reader schema (schemaless, or framed as
Confluent's serializers frame it with a schema registry). Nothing here talks to Kafka; the
registry is asked only by :meth:`DemoMessages.from_settings`.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from fastavro import schemaless_writer
from fastavro.utils import gen_data

from bucket_app.counting.decode import AVRO, JSON, writer_schema
from bucket_app.settings import Settings

# Spreads event times evenly over --spread without a random generator: the fractional parts of
# i * golden ratio fill [0, 1) uniformly, however many messages are sent.
_GOLDEN = (math.sqrt(5) - 1) / 2


def _put(message: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at the dotted ``path`` of ``message``, making the objects on the way."""
    *parents, leaf = path.split(".")
    node = message
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"field {path!r} goes through {part!r}, which is not an object")
    if isinstance(node.get(leaf), dict):
        raise ValueError(f"field {path!r} is also the parent of another field")
    node[leaf] = value


def _iso(ts_s: float) -> str:
    return datetime.fromtimestamp(math.floor(ts_s), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AvroTypes:
    """Values of the types of one parsed Avro schema: fillers, key values, time values."""

    _PRIMITIVE = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes",
                            "string"})

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.named: dict[str, Any] = schema.get("__named_schemas", {})

    def resolve(self, node: Any) -> Any:
        """A named type's definition, a plain ``{"type": T}`` as ``T``, anything else as is."""
        if isinstance(node, str):
            return self.resolve(self.named[node]) if node in self.named else node
        if isinstance(node, dict) and "logicalType" not in node:
            inner = node.get("type")
            if isinstance(inner, list | dict) or inner in self._PRIMITIVE or inner in self.named:
                return self.resolve(inner)
        return node  # recursive types never get here: load_avro_schema refuses them

    def _kind(self, node: Any) -> str:
        node = self.resolve(node)
        if isinstance(node, list):
            return "union"
        return str(node if isinstance(node, str) else node.get("type"))

    def _branch(self, node: Any) -> Any:
        """The branch of a union a value is made for: the first that is not null."""
        node = self.resolve(node)
        if isinstance(node, list):
            return next((self._branch(b) for b in node if self._kind(b) != "null"), "null")
        return node

    def record_with(self, node: Any, name: str) -> dict[str, Any] | None:
        """The record schema (``node`` or a branch of it) that has a field ``name``."""
        node = self.resolve(node)
        if isinstance(node, list):
            return next((hit for b in node if (hit := self.record_with(b, name))), None)
        if isinstance(node, dict) and node.get("type") in ("record", "error") and any(
                f["name"] == name for f in node.get("fields", [])):
            return node
        return None

    def filler(self, node: Any) -> Any:
        """A value of type ``node`` for a field nothing else sets: fastavro's generated value
        (:func:`fastavro.utils.generate_one` draws one of every type), with each field's
        schema default in place of it where the field has one."""
        return self._defaults(node, gen_data(node, self.named))

    def _defaults(self, node: Any, value: Any) -> Any:
        node = self.resolve(node)
        if isinstance(node, list) and isinstance(value, dict):  # the record branch generated
            node = next((b for b in map(self.resolve, node) if isinstance(b, dict)
                         and {f["name"] for f in b.get("fields", ())} == set(value)), None)
        if not (isinstance(node, dict) and node.get("type") in ("record", "error")
                and isinstance(value, dict)):
            return value
        for field in node.get("fields", []):
            name = field["name"]
            if "default" in field:
                value[name] = self._default(field)
            else:
                value[name] = self._defaults(field["type"], value[name])
        return value

    def _default(self, field: Mapping[str, Any]) -> Any:
        default = field["default"]
        # a bytes or fixed default is written in the schema as a string of code points 0-255
        if isinstance(default, str) and self._kind(field["type"]) in ("bytes", "fixed"):
            return default.encode("latin-1")
        return default

    def key_value(self, node: Any, k: int, label: str) -> Any:
        """A value of type ``node`` for key combination ``k``: distinct per ``k`` where the
        type has enough values (a boolean has two, an enum as many as its symbols)."""
        node = self._branch(node)
        if isinstance(node, dict):
            logical, kind = node.get("logicalType"), node.get("type")
            if logical == "uuid":
                return str(uuid.UUID(int=k))
            if logical == "decimal":
                return Decimal(k)
            if kind == "enum":
                return node["symbols"][k % len(node["symbols"])]
            if kind == "fixed":
                return (k % 256 ** node["size"]).to_bytes(node["size"], "big")
            if kind == "array":
                return [self.key_value(node["items"], k, label)]
            if kind == "map":
                return {label: self.key_value(node["values"], k, label)}
            if kind in ("record", "error"):
                return self.filler(node)
            node = kind
        values: Mapping[str, Any] = {"string": f"{label}-{k}", "bytes": f"{label}-{k}".encode(),
                                     "int": k, "long": k, "float": float(k), "double": float(k),
                                     "boolean": k % 2 == 1}
        return values.get(node)

    def time_value(self, node: Any, ts_s: float, bucket_type: str, path: str) -> Any:
        """``ts_s`` as a value of type ``node`` that the worker reads as that event time."""
        node = self._branch(node)
        logical = node.get("logicalType") if isinstance(node, dict) else None
        kind = node.get("type") if isinstance(node, dict) else node
        if bucket_type == "iso":
            if kind == "string" and logical is None:
                return _iso(ts_s)
            raise ValueError(f"bucket_field {path!r} is Avro {kind}, but bucket_type iso "
                             "needs a string")
        if logical in ("timestamp-millis", "timestamp-micros"):
            return datetime.fromtimestamp(math.floor(ts_s), UTC)  # fastavro reads it back so
        if logical is None and kind in ("int", "long"):
            return math.floor(ts_s)
        if logical is None and kind in ("float", "double"):
            return float(math.floor(ts_s))
        if logical is None and kind == "string":
            return str(math.floor(ts_s))
        raise ValueError(f"bucket_field {path!r} is Avro {logical or kind}, which cannot hold "
                         "epoch seconds")


class DemoMessages:
    """Demo messages that the settings count: the mapped fields and the time field filled.

    Message ``i`` belongs to key combination ``k = i % keys``: every field of
    ``msg_map_schema`` holds ``<field name>-<k>`` (with Avro, a value of the field's type), so
    each bucket gets ``keys`` rows. Dotted paths become nested objects. The time field holds
    the event time as epoch seconds or ISO-8601 UTC, per ``bucket_type``. With an Avro schema,
    every other field holds its schema default, or else a value fastavro generated for it once
    for the run (:meth:`AvroTypes.filler`), and mapped fields the schema lacks are left out
    (listed in :attr:`missing`: their columns will be NULL).
    """

    def __init__(self, msg_map: Mapping[str, str], bucket_field: str, bucket_type: str,
                 keys: int, avro_schema: dict[str, Any] | None = None,
                 schema_id: int | None = None) -> None:
        """``schema_id``: frame each value as Confluent's serializers do (byte 0, the id)."""
        if keys < 1:
            raise ValueError("keys must be at least 1")
        self.frame = b"" if schema_id is None else b"\x00" + schema_id.to_bytes(4, "big")
        self.fields = tuple(msg_map)
        self.bucket_field = bucket_field
        self.bucket_type = bucket_type
        self.keys = keys
        self.avro_schema = avro_schema
        self._avro = AvroTypes(avro_schema) if avro_schema is not None else None
        self.missing: tuple[str, ...] = ()
        if self._avro is not None:
            self.missing = tuple(p for p in self.fields if not self._avro_path_exists(p))
            if not self._avro_path_exists(bucket_field):
                raise ValueError(f"bucket_field {bucket_field!r} is not a field of the Avro "
                                 "schema, so demo messages would carry no event time")
        # the fields nothing sets, the same in every message of the run
        self._filler: dict[str, Any] = (
            {} if self._avro is None else self._avro.filler(self._avro.schema))
        self.encode(self.message(0, time.time()))  # every problem shows now, not mid-run

    @classmethod
    def from_settings(cls, settings: Settings, keys: int,
                      schema_version: int | None = None) -> DemoMessages:
        """Demo messages of the settings' format; with a schema registry, framed with the id
        of the reader schema (registered first when it is the avro_val_schema file), or of
        version ``schema_version`` of the subject ``<topic>-value``."""
        if settings.schema_registry_url is None:
            if schema_version is not None:
                raise ValueError("--schema-version needs a schema_registry_url")
            return cls(settings.msg_map, settings.bucket_field, settings.bucket_type, keys,
                       settings.avro_schema)
        from bucket_app.kafka.registry import (  # noqa: PLC0415 - produce only
            RegistryClient,
            value_subject,
        )

        client = RegistryClient(settings)
        subject = value_subject(settings.topic)
        if schema_version is None and settings.avro_schema_path is not None:
            text = settings.avro_schema_path.read_text(encoding="utf-8")
            schema_id = client.register(subject, text)
            return cls(settings.msg_map, settings.bucket_field, settings.bucket_type, keys,
                       settings.avro_schema, schema_id)
        found = client.version(subject, "latest" if schema_version is None else schema_version)
        if found is None:
            raise ValueError(f"the schema registry has no version {schema_version or 'latest'} "
                             f"of subject {subject}" + ("" if schema_version else
                                                        "; set avro_val_schema to register one"))
        writer = writer_schema(found.schema_id, found.schema_type, found.text)
        if writer.kind not in (AVRO, JSON):
            raise ValueError(f"version {found.version} of subject {subject} cannot be "
                             f"written: {writer.why}")
        print(f"bucket_app: writing with subject {subject} version {found.version} "
              f"(id {found.schema_id})", file=sys.stderr)
        return cls(settings.msg_map, settings.bucket_field, settings.bucket_type, keys,
                   writer.schema, found.schema_id)

    def key(self, index: int) -> int:
        return index % self.keys

    def message(self, index: int, event_time_s: float) -> dict[str, Any]:
        k = self.key(index)
        if self._avro is None:
            message: dict[str, Any] = {}
            for path in self.fields:
                _put(message, path, f"{path.rsplit('.', 1)[-1]}-{k}")
            time_value = (_iso(event_time_s) if self.bucket_type == "iso"
                          else math.floor(event_time_s))
            _put(message, self.bucket_field, time_value)
            return message
        avro = self._avro
        record: dict[str, Any] = copy.deepcopy(self._filler)
        for path in self.fields:
            if path not in self.missing:
                self._assign(record, avro.schema, path.split("."), functools.partial(
                    avro.key_value, k=k, label=path.rsplit(".", 1)[-1]))
        self._assign(record, avro.schema, self.bucket_field.split("."), functools.partial(
            avro.time_value, ts_s=event_time_s, bucket_type=self.bucket_type,
            path=self.bucket_field))
        return record

    def encode(self, message: dict[str, Any]) -> bytes:
        """JSON, or schemaless Avro; after a Confluent frame with a schema registry."""
        if self.avro_schema is None:
            return self.frame + orjson.dumps(message)
        buffer = io.BytesIO(self.frame)
        buffer.seek(len(self.frame))
        try:
            schemaless_writer(buffer, self.avro_schema, message)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"cannot write a demo record for this Avro schema: "
                             f"{type(exc).__name__}: {exc}") from exc
        return buffer.getvalue()

    def _avro_path_exists(self, path: str) -> bool:
        assert self._avro is not None
        node: Any = self._avro.schema
        for part in path.split("."):
            record = self._avro.record_with(node, part)
            if record is None:
                return False
            node = next(f["type"] for f in record["fields"] if f["name"] == part)
        return True

    def _assign(self, record: dict[str, Any], schema: Any, parts: list[str],
                make: Callable[[Any], Any]) -> None:
        assert self._avro is not None
        found = self._avro.record_with(schema, parts[0])
        assert found is not None  # checked in __init__
        field_type = next(f["type"] for f in found["fields"] if f["name"] == parts[0])
        if len(parts) == 1:
            record[parts[0]] = make(field_type)
            return
        inner = self._avro.record_with(field_type, parts[1])
        assert inner is not None
        child = record.get(parts[0])
        if not isinstance(child, dict):  # None of an optional record: fill the record in
            child = self._avro.filler(inner)
            record[parts[0]] = child
        self._assign(child, inner, parts[1:], make)


def spread_time(index: int, now_s: float, spread_s: float) -> float:
    """Event time of message ``index``: ``now_s``, or spread evenly over ``spread_s`` before."""
    if spread_s <= 0:
        return now_s
    return now_s - spread_s * ((index * _GOLDEN) % 1.0)
