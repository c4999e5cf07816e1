"""Tests for bucket_app.counting.decode: JSON and Avro (schemaless and Confluent) decoding."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_writer

from bucket_app.counting.decode import (
    PREVIEW_CHARS,
    AvroDecoder,
    JsonDecoder,
    load_avro_schema,
    make_decoder,
)
from bucket_app.errors import BadInput, DecodeError

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "example.avsc"

RECORD: dict[str, Any] = {
    "origin_server": "web-1",
    "topic": "clicks",
    "timestamp": 1440179085,
    "meta": {"host": "h1"},
}

# Same field names as the example, other types: a producer on the wrong schema.
OTHER_SCHEMA = {
    "type": "record",
    "name": "Other",
    "fields": [
        {"name": "origin_server", "type": "long"},
        {"name": "topic", "type": "double"},
        {"name": "timestamp", "type": "boolean"},
    ],
}


def avro_body(schema: dict[str, Any], record: Any) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


def confluent(body: bytes, schema_id: int = 42) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load_avro_schema(SCHEMA_PATH)


@pytest.fixture(scope="module")
def avro(schema: dict[str, Any]) -> AvroDecoder:
    return AvroDecoder(schema)


# --- JSON -----------------------------------------------------------------------------


def test_json_decodes_object() -> None:
    data = b'{"origin_server": "web-1", "timestamp": 1440179085, "meta": {"host": "h1"}}'
    assert JsonDecoder().decode(data) == {
        "origin_server": "web-1",
        "timestamp": 1440179085,
        "meta": {"host": "h1"},
    }


def test_json_accepts_unicode_and_memoryview() -> None:
    data = '{"s": "caf\u00e9"}'.encode()
    assert JsonDecoder().decode(data) == {"s": "caf\u00e9"}
    assert JsonDecoder().decode(memoryview(data)) == {"s": "caf\u00e9"}  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [b"not json", b'{"a": 1', b"{'a': 1}", b"\xff\xfe", b"  "])
def test_json_bad(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        JsonDecoder().decode(data)
    assert info.value.reason == "not_json"
    assert isinstance(info.value.__cause__, orjson.JSONDecodeError)


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"12", b"null", b"true"])
def test_json_not_object(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        JsonDecoder().decode(data)
    assert info.value.reason == "not_object"


@pytest.mark.parametrize("data", [None, b""])
def test_json_empty(data: bytes | None) -> None:
    with pytest.raises(DecodeError) as info:
        JsonDecoder().decode(data)
    assert info.value.reason == "empty"


def test_error_message_truncates_payload() -> None:
    data = b"x" * 10_000
    with pytest.raises(DecodeError) as info:
        JsonDecoder().decode(data)
    message = str(info.value)
    assert len(message) < 300
    assert "x" * (PREVIEW_CHARS - 2) in message  # after the b' of the repr
    assert "x" * PREVIEW_CHARS not in message
    assert "10000 bytes" in message


def test_decode_error_is_bad_input() -> None:
    # The agent catches BadInput per message; DecodeError must be in that family.
    with pytest.raises(BadInput):
        JsonDecoder().decode(b"[]")


# --- Avro -----------------------------------------------------------------------------


def test_load_avro_schema_example(schema: dict[str, Any]) -> None:
    assert schema["name"] == "bucket_app.example.Message"
    assert [f["name"] for f in schema["fields"]] == ["origin_server", "topic", "timestamp", "meta"]


def test_avro_schemaless_and_confluent_agree(avro: AvroDecoder, schema: dict[str, Any]) -> None:
    body = avro_body(schema, RECORD)
    assert avro.decode(body) == RECORD
    assert avro.decode(confluent(body)) == RECORD
    # The registry id is ignored, whatever it is.
    assert avro.decode(confluent(body, schema_id=0)) == RECORD
    assert avro.decode(confluent(body, schema_id=0xFFFFFFFF)) == RECORD


def test_avro_schemaless_starting_with_zero_byte(avro: AvroDecoder, schema: dict[str, Any]) -> None:
    # An empty first string encodes as 0x00, like the Confluent magic byte: the framed
    # reading must fail or not fit exactly, and the schemaless one must win.
    record = {**RECORD, "origin_server": ""}
    body = avro_body(schema, record)
    assert body[0] == 0 and len(body) > 5
    assert avro.decode(body) == record
    assert avro.decode(confluent(body)) == record


def test_avro_other_schema_is_mismatch(avro: AvroDecoder) -> None:
    body = avro_body(OTHER_SCHEMA, {"origin_server": 3, "topic": 1.5, "timestamp": True})
    for data in (body, confluent(body)):
        with pytest.raises(DecodeError) as info:
            avro.decode(data)
        assert info.value.reason == "avro_mismatch"
        assert info.value.__cause__ is not None


def test_avro_trailing_bytes_is_mismatch(avro: AvroDecoder, schema: dict[str, Any]) -> None:
    body = avro_body(schema, RECORD)
    with pytest.raises(DecodeError) as info:
        avro.decode(body + b"\x02\x02")
    assert info.value.reason == "avro_mismatch"


def test_avro_truncated_body(avro: AvroDecoder, schema: dict[str, Any]) -> None:
    body = avro_body(schema, RECORD)
    for cut in range(1, len(body)):
        for data in (body[:cut], confluent(body[:cut])):
            with pytest.raises(DecodeError) as info:
                avro.decode(data)
            assert info.value.reason == "avro_mismatch"


def test_avro_bad_utf8_is_mismatch(avro: AvroDecoder) -> None:
    # A string of length 2 holding invalid UTF-8.
    with pytest.raises(DecodeError) as info:
        avro.decode(b"\x04\xff\xfe\x00\x02\x02h1")
    assert info.value.reason == "avro_mismatch"


def test_avro_mismatch_message_is_short(avro: AvroDecoder) -> None:
    # 5000 bytes of invalid UTF-8 in the first string: UnicodeDecodeError's repr would
    # carry all of them; the message must not.
    data = b"\x90\x4e" + b"\xff" * 5000 + b"\x00\x02"
    with pytest.raises(DecodeError) as info:
        avro.decode(data)
    message = str(info.value)
    assert info.value.reason == "avro_mismatch"
    assert "bucket_app.example.Message" in message
    assert "UnicodeDecodeError" in message
    assert len(message) < 300


@pytest.mark.parametrize("data", [None, b""])
def test_avro_empty(avro: AvroDecoder, data: bytes | None) -> None:
    with pytest.raises(DecodeError) as info:
        avro.decode(data)
    assert info.value.reason == "empty"


def test_avro_non_record_is_not_object() -> None:
    decoder = AvroDecoder({"type": "array", "items": "long"})
    body = avro_body({"type": "array", "items": "long"}, [1, 2])
    with pytest.raises(DecodeError) as info:
        decoder.decode(body)
    assert info.value.reason == "not_object"


def test_avro_decoder_accepts_unparsed_schema() -> None:
    raw = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}
    decoder = AvroDecoder(raw)
    assert decoder.decode(avro_body(raw, {"a": "x"})) == {"a": "x"}


def test_avro_decoder_bad_schema() -> None:
    with pytest.raises(ValueError, match="not a valid Avro schema"):
        AvroDecoder({"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]})


# --- load_avro_schema errors ----------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.avsc"
    with pytest.raises(ValueError, match=r"cannot read Avro schema file .*nope\.avsc") as info:
        load_avro_schema(path)
    assert type(info.value) is ValueError


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "is not valid JSON"),
        ('"long"', "must hold a record schema"),
        ('{"type": "array", "items": "long"}', "must hold a record schema"),
        (
            '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]}',
            "is not a valid Avro schema: UnknownType: Nope",
        ),
        (
            '{"type": "record", "name": "R", "fields": '
            '[{"name": "a", "type": "string", "default": 5}]}',
            "is not a valid Avro schema",
        ),
    ],
)
def test_load_invalid_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.avsc"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        load_avro_schema(path)
    assert type(info.value) is ValueError
    assert "bad.avsc" in str(info.value)


# --- make_decoder ---------------------------------------------------------------------


def test_make_decoder(schema: dict[str, Any]) -> None:
    assert isinstance(make_decoder(None), JsonDecoder)
    decoder = make_decoder(schema)
    assert isinstance(decoder, AvroDecoder)
    assert decoder.decode(confluent(avro_body(schema, RECORD))) == RECORD
