"""Payload shapes of the ``shapes`` contender: how one message's fields become bytes, and the
settings bucket_app needs to read them.

Every shape carries the same (server, topic, event time) per message index, so their expected
counts are the same arithmetic; only the bytes differ (``lz4``: only the batches' codec).
``bad1`` is ``flat`` with one record in a hundred that bucket_app cannot count, each with the
reason it skips it for. Imports nothing
from the ``bench`` package: ``bare.py`` (a child process) reads the Avro schema from here.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fastavro import parse_schema, schemaless_writer

# the flat message's fields, as Avro: what the avro shapes write and both readers read
AVRO_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "BenchMessage", "namespace": "bench",
    "fields": [{"name": "origin_server", "type": "string"},
               {"name": "topic", "type": "string"},
               {"name": "timestamp", "type": "long"},
               {"name": "i", "type": "long"}],
}
# avro-registry's second writer version: the first (AVRO_SCHEMA) plus a field with a default,
# the most common evolution; it is the subject's latest version, so bucket_app's reader
REGISTRY_V2: dict[str, Any] = {
    **AVRO_SCHEMA, "fields": [*AVRO_SCHEMA["fields"],
                              {"name": "note", "type": "string", "default": ""}]}
# Confluent wire format: magic byte 0, then a 4-byte schema-registry id (without a registry
# bucket_app ignores it)
CONFLUENT_HEADER = b"\x00" + (1).to_bytes(4, "big")
NESTED_MAP = {"origin_server": "server_name", "meta.host": "topic"}
BAD_EVERY = 100  # bad1: one record in a hundred is bad
PLUS_2 = timezone(timedelta(hours=2))


@dataclass(frozen=True)
class Shape:
    name: str
    bucket_type: str = "epoch"
    msg_map: dict[str, str] | None = None  # None: the tests' default (origin_server, topic)
    avro: bool = False
    confluent: bool = False
    bad: bool = False
    compression: str | None = None  # the producer's codec for the shape's batches
    # avro-registry: the registry ids of (AVRO_SCHEMA, REGISTRY_V2), known once registered
    registry: bool = False
    schema_ids: tuple[int, ...] = ()
    what: str = field(default="", compare=False)


SHAPES = {s.name: s for s in [
    Shape("flat", what="JSON, top-level fields, epoch seconds (the main topic's messages)"),
    Shape("nested", msg_map=NESTED_MAP,
          what="JSON, the topic in meta.host (msg_map origin_server, meta.host)"),
    Shape("iso", bucket_type="iso",
          what="JSON, ISO-8601 times: every fourth +02:00, two in three with a fraction"),
    Shape("avro", avro=True, what="schemaless Avro, local schema"),
    Shape("avro-confluent", avro=True, confluent=True,
          what="the same Avro behind the 5-byte Confluent header"),
    Shape("bad1", bad=True, what="flat, 1% bad records bucket_app skips, by reason"),
    Shape("lz4", compression="lz4",
          what="flat, in lz4-compressed batches (as Java producers and brokers often write)"),
    Shape("avro-registry", avro=True, registry=True,
          what="Confluent-framed Avro of two writer versions (even i: v1, odd: v2 adds a "
          "field), read with the registry's latest (v2)"),
]}

_PARSED = parse_schema(AVRO_SCHEMA)
_PARSED_V2 = parse_schema(REGISTRY_V2, named_schemas={})

# bad1's bad records, in turn: (bucket_app's skip reason, value); MISSING_TIME is a message
# without its time, which bucket_app counts at the Kafka record time (the same second here)
MISSING_TIME = "missing_time"
BAD_VALUES: list[tuple[str, bytes]] = [
    ("not_json", b'{"origin_server": "s-1", "topic": '),
    ("bad_time", b'{"origin_server": "s-1", "topic": "t-1", "timestamp": "soon"}'),
    ("not_object", b'["s-1", "t-1", 1700000000]'),
    ("empty", b""),
    (MISSING_TIME, b""),
]


def kstreams_spec(shape: Shape) -> dict[str, Any]:
    """``shape`` as the Kafka Streams contender reads it (bench/kstreams, ``Shape.java``): how
    its values hold the event time. It counts by the Kafka key (``server|topic``), so the group
    fields and ``msg_map`` are not in it."""
    return {"name": shape.name, "time": shape.bucket_type,
            "avro_schema": AVRO_SCHEMA if shape.avro else None,
            "skip": len(CONFLUENT_HEADER) if shape.confluent else 0, "bad": shape.bad}


def iso_time(i: int, ts: int) -> str:
    """Epoch second ``ts`` as ISO-8601: every fourth in +02:00, else UTC; i % 3 == 1 with
    milliseconds, i % 3 == 2 with microseconds (the fraction never leaves the second)."""
    when = datetime.fromtimestamp(ts, PLUS_2 if i % 4 == 0 else UTC)
    if i % 3 == 0:
        return when.isoformat()
    when += timedelta(microseconds=(i * 7919) % 1_000_000)
    return when.isoformat(timespec="milliseconds" if i % 3 == 1 else "microseconds")


def encode(shape: Shape, i: int, server: str, topic: str, ts: int) -> tuple[bytes, str | None]:
    """Message ``i`` of ``shape`` with these fields: (value, None), or (value, the reason
    bucket_app skips it) for a bad record, which is no message of ``server`` and ``topic``.
    A message without its time (bad1) is counted: (value, None)."""
    if shape.bad and i % BAD_EVERY == BAD_EVERY // 2:
        reason, value = BAD_VALUES[i // BAD_EVERY % len(BAD_VALUES)]
        if reason == MISSING_TIME:
            return json.dumps({"origin_server": server, "topic": topic, "i": i}).encode(), None
        return value, reason
    if shape.registry:
        version = i % 2
        buffer = io.BytesIO()
        buffer.write(b"\x00" + shape.schema_ids[version].to_bytes(4, "big"))
        record = {"origin_server": server, "topic": topic, "timestamp": ts, "i": i}
        schemaless_writer(buffer, (_PARSED, _PARSED_V2)[version],
                          record if version == 0 else {**record, "note": "v2"})
        return buffer.getvalue(), None
    if shape.avro:
        buffer = io.BytesIO()
        if shape.confluent:
            buffer.write(CONFLUENT_HEADER)
        schemaless_writer(buffer, _PARSED,
                          {"origin_server": server, "topic": topic, "timestamp": ts, "i": i})
        return buffer.getvalue(), None
    if shape.msg_map == NESTED_MAP:
        msg: dict[str, Any] = {"origin_server": server, "meta": {"host": topic},
                               "timestamp": ts, "i": i}
    else:
        msg = {"origin_server": server, "topic": topic,
               "timestamp": iso_time(i, ts) if shape.bucket_type == "iso" else ts, "i": i}
    return json.dumps(msg).encode(), None
