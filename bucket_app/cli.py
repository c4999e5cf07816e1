"""``bucket-app``: the operator's command line — check the settings, produce demo data, query.

``check`` loads the settings exactly as the worker does (:func:`bucket_app.settings.load`) and
shows each key's effective value and its source, secrets masked. ``produce`` writes demo
messages the settings count, to their topic with their security
(:func:`bucket_app.kafka.security.client_kwargs`); :class:`DemoMessages` builds them, a pure
function of the message's index and event time. ``query`` sends SQL to a running worker's
``POST /api/v1/sql`` with urllib and prints the rows; :func:`render` is pure too.
``uses-local-broker`` answers the Makefile: does ``make run`` need ``make kafka``?

Exit status: 0 done, 1 the worker or the brokers failed us, 2 bad settings or arguments.
The Kafka producer and tqdm are imported by ``produce`` only, so ``query`` starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import io
import json
import logging
import math
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from fastavro import schemaless_writer

from bucket_app import settings as settings_module
from bucket_app.counting.decode import AVRO, JSON, writer_schema
from bucket_app.errors import (
    BucketAppError,
    QueryError,
    RegistryError,
    RegistryRefused,
)
from bucket_app.settings import KEYS_BY_NAME, SECRET_KEYS, SETTINGS_ENV, Settings

PROG = "bucket-app"
LOCAL_BROKERS = frozenset({"127.0.0.1:9092", "localhost:9092"})
EXIT_FAILED = 1
EXIT_USAGE = 2
TOKEN_ENV = KEYS_BY_NAME["http_token"].env
FORMATS = ("table", "csv", "json")
_UNSET = frozenset({"", "none", "null"})
# Spreads event times evenly over --spread without a random generator: the fractional parts of
# i * golden ratio fill [0, 1) uniformly, however many messages are sent.
_GOLDEN = (math.sqrt(5) - 1) / 2
# Forget acknowledged sends this often, so an endless run keeps bounded memory.
_TRIM_EVERY = 1000


def _fail(message: str, status: int) -> int:
    print(f"bucket_app: {message}", file=sys.stderr)
    return status


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---- check ------------------------------------------------------------------------------------


def settings_rows(found: Mapping[str, tuple[str, str]],
                  environ: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(section, key, value, source) per key; secrets that are set shown as ``***``."""
    rows = []
    for name, (text, origin) in found.items():
        key = KEYS_BY_NAME[name]
        value = text.strip().replace("\r", "\\r").replace("\n", "\\n")
        source = {"env": f"environment ({key.env})"}.get(origin, origin)
        if name == "web_port" and environ.get("PORT"):
            value, source = environ["PORT"].strip(), "environment (PORT)"
        if name in SECRET_KEYS and value.lower() not in _UNSET:
            value = "***"
        rows.append((key.section, name, value, source))
    return rows


def cmd_check(args: argparse.Namespace) -> int:
    # imported here: aiokafka is only needed to check the TLS files and codecs, not to ask
    # uses-local-broker
    from bucket_app.kafka import codecs  # noqa: PLC0415
    from bucket_app.kafka.security import ssl_context  # noqa: PLC0415

    try:
        settings = settings_module.load(args.settings)
        ssl_context(settings)  # the PEM files load, as every Kafka client will need them to
        codecs.check()  # every compressed batch can be read, as the worker checks at start
        if settings.schema_registry_url is not None:
            from bucket_app.kafka.registry import RegistryClient  # noqa: PLC0415

            RegistryClient(settings)  # and the registry's CA file
        found = settings_module.sources(args.settings)
    except BucketAppError as exc:
        return _fail(str(exc), EXIT_USAGE)
    print(f"bucket_app: {settings.source} is valid; topic {settings.topic} "
          f"on {','.join(settings.brokers)}")
    print(render_table(("section", "key", "value", "source"),
                       settings_rows(found, os.environ)), end="")
    return 0


def cmd_uses_local_broker(args: argparse.Namespace) -> int:
    try:
        settings = settings_module.load(args.settings)
    except BucketAppError as exc:
        return _fail(str(exc), EXIT_USAGE)
    return 0 if set(settings.brokers) <= LOCAL_BROKERS else 1


# ---- produce: demo messages -------------------------------------------------------------------


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


class _AvroTypes:
    """Values of the types of one parsed Avro schema: zero values, key values, time values."""

    _ZERO: Mapping[str, Any] = {"null": None, "boolean": False, "int": 0, "long": 0,
                                "float": 0.0, "double": 0.0, "bytes": b"", "string": ""}

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.named: dict[str, Any] = schema.get("__named_schemas", {})

    def resolve(self, node: Any) -> Any:
        """A named type's definition, a plain ``{"type": T}`` as ``T``, anything else as is."""
        if isinstance(node, str):
            return self.resolve(self.named[node]) if node in self.named else node
        if isinstance(node, dict) and "logicalType" not in node:
            inner = node.get("type")
            if isinstance(inner, list | dict) or inner in self._ZERO or inner in self.named:
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

    def zero(self, node: Any) -> Any:
        """The value a writer fills in when it knows nothing: a default, or 0, "", [], {}."""
        node = self.resolve(node)
        if isinstance(node, str):
            return self._ZERO.get(node)
        if isinstance(node, list):  # a union's default is of its first branch
            return None if any(self._kind(b) == "null" for b in node) else self.zero(node[0])
        logical, kind = node.get("logicalType"), node.get("type")
        if logical == "uuid":
            return str(uuid.UUID(int=0))
        if logical == "decimal":
            return Decimal(0)
        if kind in ("record", "error"):
            return {f["name"]: self._default(f) for f in node.get("fields", [])}
        if kind == "enum":
            return node.get("default", node["symbols"][0])
        if kind == "fixed":
            return bytes(node["size"])
        if kind == "array":
            return []
        if kind == "map":
            return {}
        return self.zero(kind)

    def _default(self, field: Mapping[str, Any]) -> Any:
        if "default" not in field:
            return self.zero(field["type"])
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
                return self.zero(node)
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
    every other field holds its default or zero value, and mapped fields the schema lacks are
    left out (listed in :attr:`missing`: their columns will be NULL).
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
        self._avro = _AvroTypes(avro_schema) if avro_schema is not None else None
        self.missing: tuple[str, ...] = ()
        if self._avro is not None:
            self.missing = tuple(p for p in self.fields if not self._avro_path_exists(p))
            if not self._avro_path_exists(bucket_field):
                raise ValueError(f"bucket_field {bucket_field!r} is not a field of the Avro "
                                 "schema, so demo messages would carry no event time")
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
        record: dict[str, Any] = avro.zero(avro.schema)
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
            child = self._avro.zero(inner)
            record[parts[0]] = child
        self._assign(child, inner, parts[1:], make)


def spread_time(index: int, now_s: float, spread_s: float) -> float:
    """Event time of message ``index``: ``now_s``, or spread evenly over ``spread_s`` before."""
    if spread_s <= 0:
        return now_s
    return now_s - spread_s * ((index * _GOLDEN) % 1.0)


async def _ensure_topic(settings: Settings, kwargs: Mapping[str, Any]) -> None:
    """Create the topic as the worker would (``partitions``) instead of letting the broker
    auto-create it with its own default count."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415
    from aiokafka.errors import TopicAlreadyExistsError, for_code  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=",".join(settings.brokers), **kwargs)
    await admin.start()
    try:
        if settings.topic in await admin.list_topics():
            return
        topic = NewTopic(settings.topic, settings.partitions, settings.replication_factor)
        try:
            answer = await admin.create_topics([topic])
        except TopicAlreadyExistsError:
            return
        for entry in getattr(answer, "topic_errors", ()):
            code = entry[1]
            if entry[0] == settings.topic and code not in (0, TopicAlreadyExistsError.errno):
                print(f"bucket_app: could not create topic {settings.topic} "
                      f"({for_code(code).__name__}); producing anyway", file=sys.stderr)
                return
        print(f"bucket_app: created topic {settings.topic} with {settings.partitions} "
              "partitions", file=sys.stderr)
    finally:
        await admin.close()


async def produce(settings: Settings, demo: DemoMessages, count: int, rate: float,
                  spread_s: float) -> Counter[int]:
    """Send ``count`` demo messages (0: until SIGINT/SIGTERM) at ``rate`` per second (0: as
    fast as the broker takes them); the acknowledged messages per partition."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from bucket_app.kafka.security import client_kwargs  # noqa: PLC0415

    kwargs = client_kwargs(settings)
    await _ensure_topic(settings, kwargs)
    # idempotent and acks=all: a retry after a leader change must not count a message twice
    producer = AIOKafkaProducer(bootstrap_servers=",".join(settings.brokers), acks="all",
                                enable_idempotence=True, linger_ms=5, **kwargs)
    await producer.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    acked: Counter[int] = Counter()
    # disable=None: a bar on a terminal only, never in a log file
    bar = tqdm(total=count or None, unit="msg", file=sys.stderr, disable=None,
               desc=settings.topic, dynamic_ncols=True)

    def on_ack(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            acked[future.result().partition] += 1
            bar.update(1)

    pending: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    try:
        index = 0
        while (count == 0 or index < count) and not stop.is_set():
            if rate > 0:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
            message = demo.message(index, spread_time(index, time.time(), spread_s))
            future = await producer.send(settings.topic, demo.encode(message),
                                         key=str(demo.key(index)).encode())
            future.add_done_callback(on_ack)
            pending.append(future)
            index += 1
            if index % _TRIM_EVERY == 0:
                for done in [f for f in pending if f.done()]:
                    done.result()  # a failed send stops the run with its error
                pending = [f for f in pending if not f.done()]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        bar.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    return acked


def produce_summary(topic: str, acked: Mapping[int, int]) -> str:
    parts = ", ".join(f"{p}: {n}" for p, n in sorted(acked.items()))
    return f"sent {sum(acked.values())} to topic {topic} (partitions {parts or 'none'})"


def cmd_produce(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaConnectionError, KafkaError  # noqa: PLC0415

    from bucket_app.kafka.security import raise_if_refused  # noqa: PLC0415

    try:
        settings = settings_module.load(args.settings)
        demo = DemoMessages.from_settings(settings, args.keys, args.schema_version)
    except RegistryError as exc:
        if isinstance(exc, RegistryRefused):
            return _fail(str(exc), EXIT_USAGE)
        return _fail(f"produce: {exc}", EXIT_FAILED)
    except BucketAppError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ValueError as exc:
        return _fail(f"produce: {exc}", EXIT_USAGE)
    for path in demo.missing:
        print(f"bucket_app: msg_map_schema field {path!r} is not in the Avro schema; its column "
              "will be NULL", file=sys.stderr)
    if args.spread > settings.clean_interval_s:
        print(f"bucket_app: --spread {args.spread:g} s is longer than clean_interval "
              f"({settings.clean_interval_s:g} s): the oldest messages will be skipped as "
              "expired", file=sys.stderr)
    brokers = ",".join(settings.brokers)
    # aiokafka logs each failed connection; the one line below says what went wrong instead
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        acked = asyncio.run(produce(settings, demo, args.count, args.rate, args.spread))
    except KafkaConnectionError as exc:
        try:
            asyncio.run(raise_if_refused(settings))  # a refusal names the key to fix
        except BucketAppError as refused:
            return _fail(str(refused), EXIT_USAGE)
        return _fail(f"cannot reach the Kafka brokers at {brokers}: {_one_line(str(exc))}",
                     EXIT_FAILED)
    except (KafkaError, OSError) as exc:
        return _fail(f"producing to {settings.topic} on {brokers} failed: "
                     f"{type(exc).__name__}: {_one_line(str(exc))}", EXIT_FAILED)
    except BucketAppError as exc:
        return _fail(str(exc), EXIT_USAGE)
    print(produce_summary(settings.topic, acked))
    return 0


# ---- query ------------------------------------------------------------------------------------


def _cell(value: Any, null: str) -> str:
    if value is None:
        return null
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table: a header, a rule, the rows; numbers right-aligned, NULL shown."""
    cells = [[_cell(v, "NULL").replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
              for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
               for i in range(len(columns))]

    def line(values: Sequence[str], right: Sequence[bool]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right, strict=True)).rstrip()

    out = [line(columns, numeric), line(["-" * w for w in widths], numeric)]
    out.extend(line(row, numeric) for row in cells)
    return "\n".join(out) + "\n"


def render(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The rows of a ``/api/v1/sql`` answer (objects in ``columns`` order) as table, csv, json."""
    if fmt == "json":
        return json.dumps([dict(r) for r in rows], ensure_ascii=False) + "\n"
    values = [[row.get(c) for c in columns] for row in rows]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v, "") for v in row] for row in values)
        return buffer.getvalue()
    return render_table(columns, values)


def run_query(url: str, sql: str, params: list[Any] | None, token: str | None,
              timeout_s: float) -> dict[str, Any]:
    """POST ``sql`` to ``url``/api/v1/sql; the JSON answer, or QueryError with one line
    (ValueError for a URL that is not http or https)."""
    body: dict[str, Any] = {"sql": sql}
    if params:
        body["params"] = params
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        url.rstrip("/") + "/api/v1/sql", method="POST", data=json.dumps(body).encode(),
        headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise QueryError(_http_error(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise QueryError(f"the worker is not reachable at {url} "
                         f"({_one_line(str(reason)) or type(exc).__name__})") from None
    except ValueError as exc:
        raise QueryError(f"the answer from {url} is not JSON: {exc}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("rows"), list):
        raise QueryError(f"the answer from {url} is not an /api/v1/sql answer")
    return answer


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    return f"HTTP {exc.code}: {_one_line(message or exc.reason or 'error')}"


def _default_url(settings: Settings) -> str:
    host = settings.web_host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # where to connect
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}"


def _param(text: str) -> Any:
    """A --param: JSON when it parses (42, 1.5, null, "x"), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_query(args: argparse.Namespace) -> int:
    url, token = args.url, args.token or os.environ.get(TOKEN_ENV)
    if url is None:
        try:
            settings = settings_module.load(args.settings)
        except BucketAppError as exc:
            return _fail(str(exc), EXIT_USAGE)
        url, token = _default_url(settings), token or settings.http_token
    params = [_param(p) for p in args.param] if args.param else None
    try:
        answer = run_query(url, args.sql, params, token, args.timeout)
    except QueryError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except ValueError as exc:
        return _fail(f"--url {exc}", EXIT_USAGE)
    columns = answer.get("columns") or (list(answer["rows"][0]) if answer["rows"] else [])
    sys.stdout.write(render(columns, answer["rows"], args.format))
    if answer.get("truncated"):
        print(f"bucket_app: truncated at {len(answer['rows'])} rows (sql_row_limit)",
              file=sys.stderr)
    return 0


# ---- arguments --------------------------------------------------------------------------------


def _at_least(minimum: float, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, not {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--settings", type=Path, metavar="PATH",
                        help=f"the settings file (default: ${SETTINGS_ENV}, or ./settings.ini)")
    parser = argparse.ArgumentParser(
        prog=PROG, description="Check bucket_app's settings, produce demo messages, query "
                               "a running worker.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check", parents=[common], help="validate the settings and show "
                           "each effective value and its source")
    check.set_defaults(run=cmd_check)
    local = sub.add_parser("uses-local-broker", parents=[common],
                           help="exit 0 when the settings name the broker of `make kafka`")
    local.set_defaults(run=cmd_uses_local_broker)

    produce_ = sub.add_parser("produce", parents=[common], help="send demo messages the "
                              "settings count to their topic")
    produce_.add_argument("--count", type=_at_least(0, int), default=1000,
                          help="messages to send; 0 = until Ctrl-C (default 1000)")
    produce_.add_argument("--keys", type=_at_least(1, int), default=5,
                          help="distinct values of the mapped fields, so rows per bucket "
                               "(default 5)")
    produce_.add_argument("--rate", type=_at_least(0, float), default=0.0,
                          help="messages per second; 0 = as fast as possible (default)")
    produce_.add_argument("--spread", type=_at_least(0, float), default=0.0, metavar="SECONDS",
                          help="spread event times over this many seconds before now "
                               "(default 0: now)")
    produce_.add_argument("--schema-version", type=_at_least(1, int), metavar="N",
                          help="with a schema registry: write with version N of the subject "
                               "<topic>-value (default: the reader schema)")
    produce_.set_defaults(run=cmd_produce)

    query = sub.add_parser("query", parents=[common], help="run read-only SQL on a running "
                           "worker (POST /api/v1/sql)")
    query.add_argument("sql", help='one SELECT statement, e.g. \'SELECT * FROM "default"\'')
    query.add_argument("--url", help="the worker (default http://<web_host>:<web_port> of the "
                       "settings)")
    query.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV}, or the settings' "
                       "http_token)")
    query.add_argument("--format", choices=FORMATS, default="table",
                       help="output format (default table)")
    query.add_argument("-p", "--param", action="append", metavar="VALUE",
                       help="a value for the next ? in the SQL (JSON, or else text); repeat")
    query.add_argument("--timeout", type=_at_least(0.1, float), default=30.0,
                       metavar="SECONDS", help="give up after this long (default 30)")
    query.set_defaults(run=cmd_query)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bucket-app`` console script; without a command it is ``check``."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        args = build_parser().parse_args(["check", *(argv if argv is not None else sys.argv[1:])])
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
