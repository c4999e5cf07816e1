"""The native kernel reading Avro against :meth:`Classifier.locate` (fastavro) on the same bytes.

Values are encoded here, byte by byte, from the schemas (not by fastavro's writer, so that odd
but readable encodings occur too: negative block counts, every union branch, enum symbols the
reader lacks), then framed schemaless or Confluent-style, sometimes mutated or cut, and put in
record batches of every codec. Without a registry they are read with the settings' schema;
with one, each schema id's writer schema is resolved against the reader (the evolutions of
tests/integration/test_schema_registry.py: a field added with a default, an optional one
dropped, int promoted to long, a field renamed with an alias; plus unions, enums, nested
records, arrays, maps), and ids the registry does not know, cannot use, or holds a JSON Schema
under are skipped by reason. Every record: the same window-key (value types included) or skip
reason, every key the same count and highest offset (tests.support.batches.counts_as_locate).
"""

from __future__ import annotations

import json
import os
import random
import struct
import time
from typing import Any

import pytest
from fastavro import parse_schema
from hypothesis import given
from hypothesis import strategies as st

from bucket_app.counting.avro_plan import compile_plan, slot_paths
from bucket_app.counting.classify import Classifier
from bucket_app.counting.decode import (
    AVRO,
    JSON,
    UNKNOWN,
    UNUSABLE,
    RegistryDecoder,
    WriterSchema,
)
from bucket_app.counting.kernel import NativeKernel
from bucket_app.errors import BadInput, KernelRefused
from bucket_app.settings import Settings
from tests.support.batches import CODECS, Rec, batch, counts_as_locate, mutate
from tests.support.counting import NOW
from tests.support.settings import make_settings, scratch_dir

BASE = scratch_dir("kernel-avro")

META: dict[str, Any] = {"type": "record", "name": "Meta", "fields": [
    {"name": "host", "type": "string", "default": "unknown"},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"],
                              "default": "A"}, "default": "A"}]}
#: The reader: what the settings' avro_val_schema file (or the subject's latest) holds.
READER: dict[str, Any] = {"type": "record", "name": "Event", "namespace": "bench", "fields": [
    {"name": "service_name", "type": "string", "aliases": ["service"]},
    {"name": "ts", "type": "long"},
    {"name": "note", "type": "string", "default": "none"},
    {"name": "level", "type": ["null", "long", "double", "boolean", "string"],
     "default": None},
    {"name": "meta", "type": ["null", META], "default": None},
    {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
    {"name": "attrs", "type": {"type": "map", "values": "long"}, "default": {}},
    {"name": "ratio", "type": "float", "default": 0.5},
    {"name": "score", "type": "double", "default": 0}]}
#: v1: the old name, an optional field since dropped, ts an int, a narrower union for level
W_OLD: dict[str, Any] = {"type": "record", "name": "Event", "fields": [
    {"name": "service", "type": "string"},
    {"name": "region", "type": ["null", "string"], "default": None},
    {"name": "ts", "type": "int"},
    {"name": "level", "type": ["null", "int", "float", "boolean", "string"]},
    {"name": "score", "type": "int"}]}
#: an enum with a symbol the reader lacks (its default), fields the reader lacks (skipped)
W_WIDE: dict[str, Any] = {"type": "record", "name": "bench.Event", "fields": [
    {"name": "blob", "type": "bytes"},
    {"name": "service_name", "type": "string"},
    {"name": "fx", "type": {"type": "fixed", "name": "Three", "size": 3}},
    {"name": "meta", "type": ["null", {**META, "fields": [
        {"name": "kind", "type": {"type": "enum", "name": "Kind",
                                  "symbols": ["A", "B", "C", "D"]}},
        {"name": "host", "type": ["string", "null"]},
        {"name": "weight", "type": "double"}]}]},
    {"name": "ts", "type": "long"},
    {"name": "extra", "type": {"type": "map", "values": ["null", "Three", "long"]}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "ratio", "type": "float"},
    {"name": "note", "type": "string"},
    {"name": "score", "type": "float"}]}
#: meta without the union, level a bare long, no score (the reader's default, 0: an int)
W_PLAIN: dict[str, Any] = {"type": "record", "name": "Event", "fields": [
    {"name": "service_name", "type": "string"},
    {"name": "meta", "type": META},
    {"name": "level", "type": "long"},
    {"name": "ts", "type": "long"}]}
#: the mapped field a record: no reader resolves it
W_BAD: dict[str, Any] = {"type": "record", "name": "Event", "fields": [
    {"name": "service_name", "type": {"type": "record", "name": "Svc", "fields": [
        {"name": "id", "type": "string"}]}},
    {"name": "ts", "type": "long"}]}

MSG_MAP = {"service_name": "service", "level": "level", "meta.host": "host",
           "meta.kind": "kind", "note": "note", "score": "score"}
SQLITE = {"service": "TEXT", "level": "TEXT", "host": "TEXT", "kind": "TEXT", "note": "TEXT",
          "score": "REAL", "bucket_start": "INTEGER", "bucket_end": "INTEGER", "count": "INTEGER"}


def avro_settings(name: str) -> Settings:
    directory = BASE / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "event.avsc").write_text(json.dumps(READER))
    return make_settings(directory, msg_map=MSG_MAP, schema=SQLITE, bucket_field="ts",
                         avro_val_schema=str(directory / "event.avsc"))


SETTINGS = avro_settings("local")
PARSED_READER = SETTINGS.avro_schema
assert PARSED_READER is not None
WRITERS = {1: WriterSchema(1, AVRO, parse_schema(READER, named_schemas={})),
           2: WriterSchema(2, AVRO, parse_schema(W_OLD, named_schemas={})),
           3: WriterSchema(3, AVRO, parse_schema(W_WIDE, named_schemas={})),
           4: WriterSchema(4, AVRO, parse_schema(W_PLAIN, named_schemas={})),
           5: WriterSchema(5, AVRO, parse_schema(W_BAD, named_schemas={})),
           6: WriterSchema(6, UNKNOWN), 7: WriterSchema(7, JSON),
           8: WriterSchema(8, UNUSABLE, why="schema type PROTOBUF is not Avro or JSON")}
SCHEMAS = {1: READER, 2: W_OLD, 3: W_WIDE, 4: W_PLAIN, 5: W_BAD}


class Fetched(dict[int, WriterSchema]):
    """The writer schemas as the intake leaves them before a batch is counted: every id of
    the batch fetched, those the registry does not know as unknown."""

    def get(self, key: int, default: Any = None) -> WriterSchema:  # type: ignore[override]
        return super().get(key, WriterSchema(key, UNKNOWN))


WRITERS = Fetched(WRITERS)


def kernels() -> dict[str, tuple[NativeKernel, Classifier]]:
    registry = Classifier(SETTINGS, decoder=RegistryDecoder(PARSED_READER, WRITERS))
    return {
        "local": (NativeKernel(SETTINGS), Classifier(SETTINGS)),
        "registry": (NativeKernel(SETTINGS, registry, reader=PARSED_READER, writers=WRITERS),
                     registry),
    }


KERNELS = kernels()


# --- Avro bytes, written by hand --------------------------------------------------------------

def varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    z &= (1 << 64) - 1
    out = bytearray()
    while True:
        if z < 0x80:
            out.append(z)
            return bytes(out)
        out.append((z & 0x7F) | 0x80)
        z >>= 7


times = st.one_of(st.integers(int(NOW) - 10**6, int(NOW) + 10**4),
                  st.sampled_from([0, -1, int(NOW) + 3601, 2**31 - 1, -(2**31), 2**62]))
texts = st.one_of(st.sampled_from(["s0", "s1", "", "é😀", "unknown", "none", "A"]),
                  st.text(max_size=6))


def encoded(schema: Any, named: dict[str, Any], field: str = "") -> st.SearchStrategy[bytes]:
    """The bytes of a value of ``schema`` (parsed, its named types in ``named``)."""
    if isinstance(schema, str) and schema in named:
        return encoded(named[schema], named, field)
    if isinstance(schema, list):
        return st.one_of([encoded(branch, named, field).map(
            lambda body, at=at: varint(at) + body) for at, branch in enumerate(schema)])
    kind = schema["type"] if isinstance(schema, dict) else schema
    if kind == "null":
        return st.just(b"")
    if kind == "boolean":
        return st.sampled_from([b"\x00", b"\x01", b"\x01", b"\x02"])
    if kind in ("int", "long"):
        if field == "ts":
            return times.map(varint)
        bound = 2**31 if kind == "int" else 2**63
        return st.one_of(st.integers(-3, 3), st.integers(-bound, bound - 1)).map(varint)
    if kind == "float":
        return st.one_of(st.sampled_from([0.0, -0.0, 1.0, 0.5]), st.floats(width=32)).map(
            lambda f: struct.pack("<f", f))
    if kind == "double":
        return st.one_of(st.sampled_from([1.0, -0.0]), st.floats()).map(
            lambda f: struct.pack("<d", f))
    if kind == "string":
        return texts.map(lambda s: (lambda b: varint(len(b)) + b)(s.encode()))
    if kind == "bytes":
        return st.binary(max_size=4).map(lambda b: varint(len(b)) + b)
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "enum":
        return st.integers(0, len(schema["symbols"]) - 1).map(varint)
    if kind in ("array", "map"):
        inner = encoded(schema["items"], named) if kind == "array" else st.tuples(
            encoded("string", named), encoded(schema["values"], named)).map(b"".join)

        def blocks(items: list[bytes], negative: bool) -> bytes:
            if not items:
                return b"\x00"
            body = b"".join(items)
            if negative:
                return varint(-len(items)) + varint(len(body)) + body + b"\x00"
            return varint(len(items)) + body + b"\x00"

        return st.builds(blocks, st.lists(inner, max_size=3), st.booleans())
    if kind == "record":
        return st.tuples(*(encoded(f["type"], named, f["name"]) for f in schema["fields"])
                         ).map(b"".join)
    raise AssertionError(kind)


def datums(schema_id: int) -> st.SearchStrategy[bytes]:
    parsed = WRITERS[schema_id].schema
    assert parsed is not None
    return encoded(parsed, parsed["__named_schemas"])


def framed(schema_id: int) -> st.SearchStrategy[bytes]:
    return datums(schema_id).map(lambda body: b"\x00" + schema_id.to_bytes(4, "big") + body)


def hostile(value: bytes) -> st.SearchStrategy[bytes]:
    """``value`` cut short, with a byte changed, or with bytes added."""
    if not value:
        return st.just(value)
    return st.one_of(
        st.integers(0, len(value) - 1).map(lambda at: value[:at]),
        st.builds(lambda at, byte: value[:at] + bytes([byte]) + value[at + 1:],
                  st.integers(0, len(value) - 1), st.integers(0, 255)),
        st.binary(min_size=1, max_size=3).map(lambda more: value + more),
        st.just(value[:1] + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01" + value[1:]))


odd = st.sampled_from([None, b"", b"\x00", b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x01",
                       b"\x00\x00\x00\x00\x07{}", b'{"ts": 1}', b"\x02"])


def nan_key(config: str, value: bytes | None) -> bool:
    """Whether Python counts ``value`` under a key holding NaN: no two such keys are equal (nor
    is one equal to itself), so no count can be compared with another. The kernel leaves them
    to Python; the fuzz still throws them at it."""
    try:
        key, _, _ = KERNELS[config][1].locate(value, 0, NOW, NOW)
    except BadInput:
        return False
    return any(type(each) is float and each != each for each in key[0])  # noqa: PLR0124


def values(config: str) -> st.SearchStrategy[bytes | None]:
    return any_values(config).filter(lambda value: not nan_key(config, value))


def any_values(config: str) -> st.SearchStrategy[bytes | None]:
    if config == "local":
        good = st.one_of(datums(1), datums(1).map(lambda b: b"\x00\x00\x00\x00\x01" + b))
    else:
        good = st.one_of(datums(1), *(framed(i) for i in SCHEMAS), st.sampled_from([
            b"\x00" + i.to_bytes(4, "big") + b"\x02x" for i in (6, 7, 8)]))
    return st.one_of(good, good, good, good.flatmap(hostile), odd, st.binary(max_size=30))


record_times = st.one_of(st.integers(int(NOW * 1000) - 10**8, int(NOW * 1000) + 10**7),
                         st.sampled_from([0, -1, 2**62]))


@st.composite
def fetches(draw: Any, config: str) -> tuple[bytes, int]:
    written = draw(st.lists(st.tuples(values(config), record_times), min_size=1, max_size=25))
    offset = draw(st.integers(0, 2**40))
    data, at = b"", 0
    while at < len(written):
        size = draw(st.integers(1, len(written) - at))
        recs = [Rec(i, ts, value) for i, (value, ts) in enumerate(written[at:at + size])]
        data += batch(offset, recs, codec=draw(st.sampled_from(CODECS)))
        offset += size
        at += size
    return data, int.from_bytes(data[:8], "big")


def check(config: str, data: bytes, fetch_offset: int, partition: int = 0) -> Any:
    kernel, classifier = KERNELS[config]
    return counts_as_locate(kernel, classifier, data, fetch_offset, partition, NOW)


@pytest.mark.parametrize("config", sorted(KERNELS))
@given(data=st.data())
def test_avro_fetches_count_as_locating_each_record(config: str, data: Any) -> None:
    fetch, fetch_offset = data.draw(fetches(config))
    check(config, fetch, fetch_offset, data.draw(st.integers(0, 7)))


# --- the kernel counts what it should --------------------------------------------------------

def clean(schema_id: int, i: int) -> bytes:
    """A value of writer ``schema_id`` every reader resolves."""
    service = f"s{i % 3}".encode()
    ts = varint(int(NOW) - 3600 + i)
    text = varint(len(service)) + service
    if schema_id == 1:
        return (text + ts + b"\x04ab" + varint(1) + varint(i % 4) + varint(1) + b"\x02h"
                + varint(i % 3) + b"\x02\x02x\x00" + b"\x00" + struct.pack("<f", 0.25)
                + struct.pack("<d", i % 2))
    if schema_id == 2:
        return text + b"\x00" + ts + varint(2) + struct.pack("<f", 1.5) + varint(i % 2)
    if schema_id == 3:
        return (b"\x02z" + text + b"abc" + varint(1) + varint(i % 4) + b"\x00\x02h"
                + struct.pack("<d", 2.0) + ts + b"\x02\x02k" + varint(2) + varint(7) + b"\x00"
                + b"\x00" + struct.pack("<f", 1.0) + b"\x02n" + struct.pack("<f", 0.5))
    assert schema_id == 4
    return text + b"\x02h" + varint(i % 3) + varint(i) + ts


@pytest.mark.parametrize("codec", CODECS)
def test_clean_records_are_counted_by_the_kernel_alone(codec: int) -> None:
    local = [Rec(i, 0, (b"\x00\x00\x00\x00\x01" if i % 2 else b"") + clean(1, i))
             for i in range(300)]
    got = check("local", batch(0, local, codec=codec), 0)
    assert got.located == 0 and sum(got.counts) == 300
    framed_recs = [Rec(i, 0, b"\x00" + (i % 4 + 1).to_bytes(4, "big") + clean(i % 4 + 1, i))
                   for i in range(400)]
    got = check("registry", batch(0, framed_recs, codec=codec), 0)
    assert got.located == 0 and sum(got.counts) == 400


def test_resolution_gives_what_fastavro_gives() -> None:
    """Promotion (int -> double: 0.0, not 0), an alias, defaults (0 stays an int, as the
    schema's JSON has it), an enum symbol the reader lacks, a nested record from a writer
    without the union."""
    recs = [Rec(0, 0, b"\x00" + (2).to_bytes(4, "big") + clean(2, 0)),
            Rec(1, 0, b"\x00" + (3).to_bytes(4, "big") + clean(3, 3)),
            Rec(2, 0, b"\x00" + (4).to_bytes(4, "big") + clean(4, 1)),
            Rec(3, 0, b"\x00" + (1).to_bytes(4, "big") + clean(1, 1))]
    got = check("registry", batch(0, recs), 0)
    values = [key[0][1:] for key in got.keys]
    assert values == [("s0", 1.5, None, None, "none", 0.0), ("s0", None, "h", "A", "n", 0.5),
                      ("s1", 1, "h", "B", "none", 0), ("s1", 1, "h", "B", "ab", 1.0)]
    assert [(type(v[1]), type(v[-1])) for v in values] == [
        (float, float), (type(None), float), (int, int), (int, float)]
    assert got.located == 0


def test_a_nan_value_is_left_to_python() -> None:
    value = clean(2, 0).replace(struct.pack("<f", 1.5), struct.pack("<f", float("nan")))
    got = KERNELS["registry"][0].count(batch(0, [Rec(0, 0, b"\x00" + (2).to_bytes(4, "big")
                                                       + value)]), 0, 0, NOW)
    assert got.located == 1 and got.keys[0][0][2] != got.keys[0][0][2]


def test_ids_without_a_plan_are_left_to_python_by_reason() -> None:
    recs = [Rec(i, 0, b"\x00" + schema_id.to_bytes(4, "big") + b"\x02x")
            for i, schema_id in enumerate([5, 6, 7, 8])]
    got = check("registry", batch(0, recs), 0)
    assert [why.reason for _, why in got.skipped] == [
        "avro_mismatch", "unknown_schema", "avro_mismatch", "avro_mismatch"]


def test_a_writer_fetched_later_is_planned_before_the_next_fetch() -> None:
    writers: dict[int, WriterSchema] = {}
    kernel = NativeKernel(SETTINGS, reader=PARSED_READER, writers=writers)
    data = batch(0, [Rec(0, 0, b"\x00" + (2).to_bytes(4, "big") + clean(2, 0))])
    first = kernel.read(data, 0, NOW)
    assert len(first.unsure) == 1  # not fetched yet: Python's (the intake fetches it first)
    writers[2] = WRITERS[2]
    assert kernel.count(data, 0, 0, NOW).located == 0


def test_plans_the_kernel_cannot_follow_leave_records_to_python() -> None:
    paths = slot_paths(list(MSG_MAP), "ts")
    logical = {"type": "record", "name": "L", "fields": [
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    assert compile_plan(parse_schema(logical, named_schemas={}), None, paths) is None
    assert ("unsure", -1, None) in (compile_plan(WRITERS[5].schema or {}, PARSED_READER, paths)
                                    or [])


def test_a_schema_that_multiplies_its_plan_has_none() -> None:
    """Each level holds the one below twice: 2**20 values from 20 named types."""
    levels: list[Any] = [{"type": "record", "name": "L0",
                          "fields": [{"name": "x", "type": "long"}]}]
    for at in range(1, 21):
        levels.append({"type": "record", "name": f"L{at}", "fields": [
            {"name": "a", "type": levels[-1]}, {"name": "b", "type": f"L{at - 1}"}]})
    schema = {"type": "record", "name": "Top", "fields": [
        {"name": "ts", "type": "long"}, {"name": "deep", "type": levels[-1]}]}
    parsed = parse_schema(schema, named_schemas={})
    assert compile_plan(parsed, None, slot_paths(["ts"], "ts")) is None


def test_paths_are_numbered_as_the_kernel_numbers_them() -> None:
    assert slot_paths(["a", "b.c", "a"], "b.c") == ["a", "b.c"]
    assert slot_paths(["a"], "t") == ["a", "t"]


# --- fuzz ------------------------------------------------------------------------------------

#: The Avro fuzz runs for half of the JSON fuzz's time (test_kernel.py), so the two together
#: take what the issue asks of one.
FUZZ_SECONDS = float(os.environ.get("BUCKET_APP_FUZZ_SECONDS", "60")) / 2


def scramble(rng: random.Random, value: bytes) -> bytes:
    """``value`` with a few random edits: bytes changed, inserted, deleted, varints made long
    or lying, cut short."""
    out = bytearray(value)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out) + 1)
        edit = rng.randrange(5)
        if edit == 0 and at < len(out):
            out[at] = rng.randrange(256)
        elif edit == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif edit == 2:
            del out[at:at + rng.randint(1, 4)]
        elif edit == 3:
            out[at:at] = rng.choice([b"\xff" * 10 + b"\x01", b"\x80" * 11, b"\x7f", b"\x01",
                                     b"\xfe\xff\xff\xff\x0f"])
        else:
            del out[at:]
    return bytes(out)


@pytest.mark.slow
def test_random_and_mutated_avro_never_crash_the_kernel() -> None:
    """For FUZZ_SECONDS: fetches of clean Avro values with random edits, through both kernels,
    each counting as locate says; and whole fetches mutated, read or refused, never a crash."""
    rng = random.Random(2222)
    deadline = time.monotonic() + FUZZ_SECONDS
    runs = refused = 0
    while time.monotonic() < deadline or runs < 100:
        runs += 1
        recs = []
        for i in range(rng.randint(1, 12)):
            schema_id = rng.randint(1, 4)
            value = b"\x00" + schema_id.to_bytes(4, "big") + clean(schema_id, i)
            if schema_id == 1 and rng.random() < 0.3:
                value = value[5:]
            if rng.random() < 0.7:
                value = scramble(rng, value)
            recs.append(Rec(i, int(NOW * 1000), value))
        data = batch(40, recs, codec=rng.choice(CODECS))
        for config, (kernel, _) in KERNELS.items():
            if any(nan_key(config, rec.value) for rec in recs):
                kernel.count(data, 1, 40, NOW)  # read, but no count to compare
            else:
                check(config, data, 40, 1)
            try:
                kernel.count(mutate(rng, data), 1, 40, NOW, check_crcs=rng.random() < 0.5)
            except KernelRefused:
                refused += 1
    assert refused, runs
