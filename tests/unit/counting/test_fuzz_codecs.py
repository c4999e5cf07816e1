"""Property tests of the decoders: any bytes give a dict or a DecodeError with a known reason."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import example, given
from hypothesis import strategies as st

from bucket_app.counting.decode import AvroDecoder, JsonDecoder, load_avro_schema
from bucket_app.errors import DecodeError
from tests.support.fuzz import (
    INT64,
    SCHEMA,
    awkward_text,
    deeply_nested,
    dumps,
    json_values,
    strict_json,
)

JSON_REASONS = {"empty", "not_json", "not_object"}
AVRO_REASONS = {"empty", "avro_mismatch", "not_object"}
AVRO = AvroDecoder(SCHEMA)
JSON = JsonDecoder()


def decode_or_reason(decoder: Any, data: bytes | None) -> Any:
    """The decoded dict, or the DecodeError's reason; anything else escapes and fails."""
    try:
        value = decoder.decode(data)
    except DecodeError as exc:
        # messages quote at most ~80 bytes of a payload, however large it is, and as a repr:
        # a producer cannot start a line of its own in the worker's log
        assert len(str(exc)) < 500 and "\n" not in str(exc), str(exc)
        return exc.reason
    assert type(value) is dict
    return value


# --- JSON -----------------------------------------------------------------------------------


@given(st.one_of(st.none(), st.binary(max_size=200)))
@example(b"\x00")
@example(b'{"a": NaN}')
@example(b"[" * 5000)
@example(b'{"\x00": "\x00"}')
def test_json_any_bytes_decode_or_fail_with_a_reason(data: bytes | None) -> None:
    answer = decode_or_reason(JSON, data)
    assert isinstance(answer, dict) or answer in JSON_REASONS


@given(json_values)
def test_json_any_value_decodes_as_the_standard_library_reads_it(value: Any) -> None:
    """Oracle: the stdlib's strict reading (no NaN/Infinity, no lone surrogates)."""
    data = dumps(value)
    answer = decode_or_reason(JSON, data)
    try:
        expected = strict_json(data)
    except ValueError:
        assert answer == "not_json"
        return
    if not isinstance(expected, dict):
        assert answer == "not_object"
    elif _fits_int64(expected):
        assert answer == expected
    else:  # orjson reads integers beyond 64 bits as floats; a dict all the same
        assert isinstance(answer, dict)


@given(st.dictionaries(awkward_text, json_values, min_size=1, max_size=5))
def test_json_objects_with_awkward_keys_round_trip(obj: dict[str, Any]) -> None:
    data = dumps(obj)
    answer = decode_or_reason(JSON, data)
    try:
        strict_json(data)
    except ValueError:
        assert answer == "not_json"
        return
    assert isinstance(answer, dict)
    if _fits_int64(obj):
        assert json.dumps(answer, sort_keys=True) == json.dumps(obj, sort_keys=True)


@pytest.mark.parametrize("depth", [10, 200, 1000, 1100, 50_000])
def test_json_deep_nesting_decodes_or_is_not_json(depth: int) -> None:
    data = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    answer = decode_or_reason(JSON, data)
    assert isinstance(answer, dict) or answer == "not_json"
    assert isinstance(decode_or_reason(JSON, json.dumps({"a": deeply_nested(min(depth, 900))})
                                       .encode()), dict | str)


def _fits_int64(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return True
    if isinstance(value, int):
        return -INT64 - 1 <= value <= 2**64 - 1
    if isinstance(value, list):
        return all(map(_fits_int64, value))
    return all(map(_fits_int64, value.values()))


# --- Avro -----------------------------------------------------------------------------------

avro_text = st.text(max_size=20)  # Avro strings are UTF-8: no lone surrogates
avro_records = st.fixed_dictionaries({
    "origin_server": avro_text,
    "topic": avro_text,
    "timestamp": st.integers(min_value=-INT64 - 1, max_value=INT64),
    "meta": st.fixed_dictionaries({"host": avro_text}),
})


def avro_body(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, SCHEMA, record)
    return buf.getvalue()


def framed(body: bytes, schema_id: int) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


@given(st.one_of(st.none(), st.binary(max_size=200)))
@example(b"\x00\x00\x00\x00\x00")  # a Confluent header and no body
@example(b"\x00\x00\x00\x00\x2a\x00")
@example(b"\xff" * 20)  # a varint that never ends
@example(b"\x7f" + b"a" * 10)  # a string length far beyond the payload
@example(b"\x02\xff\x00\x00\x00\x00")  # invalid UTF-8 in a string
def test_avro_any_bytes_decode_or_fail_with_a_reason(data: bytes | None) -> None:
    answer = decode_or_reason(AVRO, data)
    assert isinstance(answer, dict) or answer in AVRO_REASONS
    if isinstance(answer, dict):  # whatever decodes has the schema's shape
        assert set(answer) == {"origin_server", "topic", "timestamp", "meta"}


@given(avro_records, st.integers(min_value=0, max_value=2**32 - 1))
@example({"origin_server": "", "topic": "", "timestamp": 0, "meta": {"host": ""}}, 0)
@example({"origin_server": "\x00é😀", "topic": "\x00", "timestamp": -INT64 - 1,
          "meta": {"host": "a.b"}}, 0xFFFFFFFF)
def test_avro_records_decode_schemaless_and_framed(record: dict[str, Any], schema_id: int) -> None:
    body = avro_body(record)
    assert AVRO.decode(body) == record
    assert AVRO.decode(framed(body, schema_id)) == record


@given(avro_records, st.data())
def test_avro_truncated_records_fail_or_decode_to_a_record(record: dict[str, Any],
                                                          data: st.DataObject) -> None:
    body = data.draw(st.sampled_from([avro_body(record), framed(avro_body(record), 7)]))
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    answer = decode_or_reason(AVRO, body[:cut])
    if body[0] != 0:
        # a prefix of a schemaless datum that is no Confluent frame runs out of bytes
        assert answer in ("empty", "avro_mismatch")
    else:  # a prefix starting 0x00 may read as a (different) framed datum: never garbage
        assert answer in AVRO_REASONS if isinstance(answer, str) else set(answer) == set(record)


@given(avro_records, st.binary(min_size=1, max_size=8))
def test_avro_trailing_bytes_are_a_mismatch_unless_they_frame_a_record(
        record: dict[str, Any], tail: bytes) -> None:
    answer = decode_or_reason(AVRO, avro_body(record) + tail)
    assert answer in AVRO_REASONS if isinstance(answer, str) else set(answer) == set(record)


ZERO_WIDTH_ITEMS = [
    "null",
    {"type": "record", "name": "Empty", "fields": []},
    {"type": "fixed", "name": "Nothing", "size": 0},
    {"type": "record", "name": "Nulls", "fields": [{"name": "n", "type": "null"}]},
]


@pytest.mark.parametrize("items", ZERO_WIDTH_ITEMS)
@pytest.mark.parametrize("inside_map", [False, True])
def test_avro_schemas_with_arrays_of_zero_width_items_are_refused(
        items: Any, inside_map: bool, tmp_path: Any) -> None:
    """Regression: with an array of nulls in the schema, the 6-byte message
    b"\\x80\\xda\\xc4\\x09\\x00" decoded to a list of 10**7 Nones (0.6 s); a larger block count
    (a varint, up to 2**63) held the worker for good. Such a schema is refused up front."""
    array: Any = {"type": "array", "items": items}
    field_type = {"type": "map", "values": array} if inside_map else array
    schema = {"type": "record", "name": "R", "fields": [{"name": "tags", "type": field_type}]}
    with pytest.raises(ValueError, match="'tags'"):
        AvroDecoder(schema)
    path = tmp_path / "bad.avsc"
    path.write_text(json.dumps(schema))
    with pytest.raises(ValueError, match=r"bad\.avsc.*'tags'"):
        load_avro_schema(path)


@pytest.mark.parametrize("items", ["long", ["null", "string"],
                                   {"type": "enum", "name": "One", "symbols": ["x"]}])
def test_avro_arrays_whose_items_take_bytes_are_fine(items: Any) -> None:
    schema = {"type": "record", "name": "Node",
              "fields": [{"name": "kids", "type": {"type": "array", "items": items}}]}
    decoder = AvroDecoder(schema)
    # a block count of 10**7 with no items behind it runs out of bytes at once
    assert decode_or_reason(decoder, b"\x80\xda\xc4\x09\x00") == "avro_mismatch"


RECURSIVE_SCHEMAS = [
    {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]},
    {"type": "record", "name": "Tree", "namespace": "x", "fields": [
        {"name": "kids", "type": {"type": "array", "items": "Tree"}}]},
    {"type": "record", "name": "A", "fields": [{"name": "b", "type": {
        "type": "record", "name": "B", "fields": [
            {"name": "a", "type": {"type": "map", "values": "A"}}]}}]},
]


@pytest.mark.parametrize("schema", RECURSIVE_SCHEMAS, ids=["union", "array", "indirect"])
def test_recursive_avro_schemas_are_refused(schema: dict[str, Any], tmp_path: Any) -> None:
    """Regression: with {"name": "next", "type": ["null", "Node"]}, the 10,001-byte message
    b"\x02" * 10_000 + b"\x00" (a list nested 10,000 deep) made fastavro's compiled reader
    overflow the C stack: SIGSEGV, the worker gone with no exception to catch, and again on the
    same record after every restart. Recursive schemas are refused when loaded."""
    with pytest.raises(ValueError, match="recursive"):
        AvroDecoder(schema)
    path = tmp_path / "recursive.avsc"
    path.write_text(json.dumps(schema))
    with pytest.raises(ValueError, match=r"recursive\.avsc.*recursive"):
        load_avro_schema(path)


def test_a_named_type_used_twice_is_not_recursive() -> None:
    meta = {"type": "record", "name": "Meta", "fields": [{"name": "host", "type": "string"}]}
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": meta}, {"name": "b", "type": "Meta"},
        {"name": "c", "type": ["null", "Meta"]}, {"name": "d", "type": {
            "type": "array", "items": "Meta"}}]}
    assert AvroDecoder(schema).decode(b"\x02a\x02b\x00\x00") == {
        "a": {"host": "a"}, "b": {"host": "b"}, "c": None, "d": []}


@st.composite
def avro_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """Record schemas of every Avro type, nested a few levels, named uniquely."""
    names = iter(f"T{i}" for i in range(1000))
    primitives = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]

    def any_type(depth: int) -> Any:
        kinds = ["primitive"] * 4 + (["array", "map", "union", "record", "enum", "fixed",
                                      "logical"] if depth < 3 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "primitive":
            return draw(st.sampled_from(primitives))
        if kind == "array":
            return {"type": "array", "items": any_type(depth + 1)}
        if kind == "map":
            return {"type": "map", "values": any_type(depth + 1)}
        if kind == "union":
            branches = draw(st.lists(st.sampled_from(primitives), min_size=1, max_size=3,
                                     unique=True))
            return [*branches, record(depth + 1)] if draw(st.booleans()) else branches
        if kind == "enum":
            return {"type": "enum", "name": next(names),
                    "symbols": [f"S{i}" for i in range(draw(st.integers(1, 3)))]}
        if kind == "fixed":
            return {"type": "fixed", "name": next(names), "size": draw(st.integers(0, 4))}
        if kind == "logical":
            return draw(st.sampled_from([
                {"type": "long", "logicalType": "timestamp-millis"},
                {"type": "int", "logicalType": "date"},
                {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2},
                {"type": "string", "logicalType": "uuid"}]))
        return record(depth + 1)

    def record(depth: int) -> dict[str, Any]:
        count = draw(st.integers(0 if depth else 1, 3))
        return {"type": "record", "name": next(names),
                "fields": [{"name": f"f{i}", "type": any_type(depth)} for i in range(count)]}

    return record(0)


@given(avro_schemas(), st.binary(max_size=64))
@example({"type": "record", "name": "R", "fields": [
    {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]},
    b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # a timestamp beyond datetime's range
@example({"type": "record", "name": "R", "fields": [
    {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 5,
                           "scale": 2}}]}, b"\x02\xff")
def test_any_schema_reads_any_bytes_or_refuses_with_a_reason(schema: dict[str, Any],
                                                             data: bytes) -> None:
    try:
        decoder = AvroDecoder(schema)
    except ValueError as exc:  # refused up front: a schema that lets a message stall us
        assert "no bytes" in str(exc)
        return
    answer = decode_or_reason(decoder, data)
    assert isinstance(answer, dict) or answer in AVRO_REASONS
