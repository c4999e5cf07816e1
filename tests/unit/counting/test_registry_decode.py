"""Decoding with writer schemas by id (bucket_app.counting.decode.RegistryDecoder): Avro schema
resolution across four evolved versions, unknown and unusable ids, Confluent JSON Schema frames.
No registry here: the writer schemas are handed in, as the worker's intake hands them in."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from bucket_app.counting.classify import Classifier
from bucket_app.counting.decode import (
    AVRO,
    JSON,
    UNKNOWN,
    UNUSABLE,
    JsonDecoder,
    RegistryDecoder,
    SchemaNotFetched,
    WriterSchema,
    framed_ids,
    missing_field,
    writer_schema,
)
from bucket_app.errors import BadInput, DecodeError
from bucket_app.settings import load
from tests.support.evolution import INCOMPATIBLE, V1, V2, V3, V4


def frame(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema, named_schemas={}), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


def writers(**by_id: dict[str, Any]) -> dict[int, WriterSchema]:
    return {int(key[1:]): writer_schema(int(key[1:]), None, json.dumps(schema))
            for key, schema in by_id.items()}


@pytest.fixture
def decoder() -> RegistryDecoder:
    return RegistryDecoder(parse_schema(V4, named_schemas={}),
                           writers(i1=V1, i2=V2, i3=V3, i4=V4, i9=INCOMPATIBLE))


def test_each_version_is_resolved_against_the_reader(decoder):
    assert decoder.decode(frame(1, V1, {"service": "a", "region": "eu", "ts": 5})) == {
        "service_name": "a", "ts": 5, "note": "none"}  # alias, promotion, reader default
    assert decoder.decode(frame(2, V2, {"service": "b", "region": None, "ts": 6,
                                        "note": "x"})) == {
        "service_name": "b", "ts": 6, "note": "x"}
    big = 2**40  # a long only v3 and v4 can write
    assert decoder.decode(frame(3, V3, {"service": "c", "ts": big, "note": "y"})) == {
        "service_name": "c", "ts": big, "note": "y"}
    assert decoder.decode(frame(4, V4, {"service_name": "d", "ts": 7, "note": "z"})) == {
        "service_name": "d", "ts": 7, "note": "z"}


def test_a_writer_that_cannot_be_resolved_is_avro_mismatch_naming_the_id(decoder):
    with pytest.raises(DecodeError) as caught:
        decoder.decode(frame(9, INCOMPATIBLE, {"service_name": {"id": "x"}, "ts": 1}))
    assert caught.value.reason == "avro_mismatch"
    assert "writer schema id 9" in str(caught.value)


def test_an_unknown_id_is_unknown_schema(decoder):
    decoder.writers[77] = WriterSchema(77, UNKNOWN)  # type: ignore[index]
    with pytest.raises(DecodeError) as caught:
        decoder.decode(frame(77, V1, {"service": "a", "region": None, "ts": 1}))
    assert caught.value.reason == "unknown_schema" and "schema id 77" in str(caught.value)


def test_an_id_not_handed_in_is_a_bug_not_bad_input(decoder):
    with pytest.raises(SchemaNotFetched) as caught:
        decoder.decode(frame(5, V1, {"service": "a", "region": None, "ts": 1}))
    assert not isinstance(caught.value, BadInput)


def test_a_datum_longer_or_shorter_than_its_writer_schema_is_avro_mismatch(decoder):
    good = frame(4, V4, {"service_name": "d", "ts": 7, "note": "z"})
    for bad in (good + b"\x00", good[:-1]):
        with pytest.raises(DecodeError) as caught:
            decoder.decode(bad)
        assert caught.value.reason == "avro_mismatch"


def test_unframed_values_are_read_with_the_reader_schema(decoder):
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(V4, named_schemas={}),
                      {"service_name": "u", "ts": 3, "note": "n"})
    assert decoder.decode(buf.getvalue())["service_name"] == "u"
    with pytest.raises(DecodeError) as caught:
        decoder.decode(None)
    assert caught.value.reason == "empty"


@pytest.mark.parametrize(("schema_type", "text", "kind", "why"), [
    (None, json.dumps(V1), AVRO, ""),
    ("AVRO", json.dumps(V1), AVRO, ""),
    ("JSON", '{"type": "object"}', JSON, ""),
    ("PROTOBUF", "syntax = 'proto3';", UNUSABLE, "PROTOBUF"),
    (None, "{not json", UNUSABLE, "not a valid Avro schema"),
    (None, '"long"', UNUSABLE, "not a record"),
    (None, json.dumps({"type": "record", "name": "Node", "fields": [
        {"name": "next", "type": ["null", "Node"]}]}), UNUSABLE, "recursive"),
])
def test_writer_schemas_from_the_registry(schema_type, text, kind, why):
    found = writer_schema(3, schema_type, text)
    assert (found.schema_id, found.kind) == (3, kind)
    assert why in found.why


def test_an_unusable_writer_schema_is_avro_mismatch(decoder):
    decoder.writers[8] = writer_schema(8, "PROTOBUF", "")  # type: ignore[index]
    with pytest.raises(DecodeError) as caught:
        decoder.decode(b"\x00\x00\x00\x00\x08\x02")
    assert caught.value.reason == "avro_mismatch" and "id 8" in str(caught.value)


def test_json_schema_frames_are_json_with_or_without_a_registry():
    framed = b"\x00\x00\x00\x00\x05" + b'{"service": "a", "ts": 1}'
    assert JsonDecoder().decode(framed) == {"service": "a", "ts": 1}
    registry_json = RegistryDecoder(None, {5: WriterSchema(5, JSON)})
    assert registry_json.decode(framed) == {"service": "a", "ts": 1}
    assert registry_json.decode(b'{"plain": true}') == {"plain": True}
    with pytest.raises(DecodeError) as caught:  # an Avro value where JSON is counted
        RegistryDecoder(None, writers(i1=V1)).decode(
            frame(1, V1, {"service": "a", "region": None, "ts": 1}))
    assert caught.value.reason == "not_json"
    with pytest.raises(DecodeError) as caught:  # a JSON value where Avro is counted
        RegistryDecoder(parse_schema(V4, named_schemas={}),
                        {5: WriterSchema(5, JSON)}).decode(framed)
    assert caught.value.reason == "avro_mismatch"


def test_framed_ids():
    values = [frame(1, V1, {"service": "a", "region": None, "ts": 1}), b'{"a": 1}', None, b"",
              b"\x00\x00\x01\x00\x00\x02", b"\x00\x00"]
    assert framed_ids(values) == {1, 65536}


def test_missing_field_follows_nested_records_and_unions():
    schema = parse_schema({"type": "record", "name": "Outer", "fields": [
        {"name": "meta", "type": ["null", {"type": "record", "name": "Meta", "fields": [
            {"name": "host", "type": "string"}]}]},
        {"name": "again", "type": "Meta"},
        {"name": "ts", "type": "long"}]}, named_schemas={})
    assert not missing_field(schema, "ts")
    assert not missing_field(schema, "meta.host")
    assert not missing_field(schema, "again.host")
    assert missing_field(schema, "meta.port")
    assert missing_field(schema, "ts.x")
    assert missing_field(schema, "nope")


def test_the_batch_path_agrees_with_locate_on_interleaved_versions(tmp_path, decoder):
    """Classifier.group with a registry decoder gives every record what locate gives it."""
    (tmp_path / "map.json").write_text(json.dumps({"service_name": "service",
                                                   "note": "note"}))
    (tmp_path / "schema.json").write_text(json.dumps({
        "service": "TEXT", "note": "TEXT", "bucket_start": "INTEGER",
        "bucket_end": "INTEGER", "count": "INTEGER"}))
    (tmp_path / "settings.ini").write_text(
        "[KafkaSettings]\nbrokers = 127.0.0.1:9092\ntopic = t\n"
        "[MsgSettings]\nbucket_interval = 20\nbucket_field = ts\nbucket_type = epoch\n"
        "msg_map_schema = map.json\n"
        "[HTTPEndpointSetting]\nsqlite_schema = schema.json\nsqlite_db = :memory:\n"
        "sqlite_table = t\nclean_interval = 7d\nclean_freq = 10m\n")
    settings = load(tmp_path / "settings.ini", {})
    classifier = Classifier(settings, decoder=decoder)
    now = 1_700_000_000
    values = []
    for i in range(400):
        version = i % 5
        ts = now - i
        if version == 0:
            values.append(frame(1, V1, {"service": f"s{i % 3}", "region": None, "ts": ts}))
        elif version == 1:
            values.append(frame(2, V2, {"service": f"s{i % 3}", "region": "eu", "ts": ts,
                                        "note": "v2"}))
        elif version == 2:
            values.append(frame(3, V3, {"service": f"s{i % 3}", "ts": ts, "note": "v3"}))
        elif version == 3:
            values.append(frame(4, V4, {"service_name": f"s{i % 3}", "ts": ts, "note": "v4"}))
        else:
            values.append(frame(9, INCOMPATIBLE, {"service_name": {"id": "x"}, "ts": ts}))
    grouped = classifier.group(values, list(range(len(values))), lambda at: None, 0, now)
    assert grouped is not None
    expected: dict[Any, int] = {}
    reasons: dict[str, int] = {}
    for value in values:
        try:
            key, _, _ = classifier.locate(value, 0, None, now)
        except BadInput as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
            continue
        expected[key] = expected.get(key, 0) + 1
    assert dict(zip(grouped.keys, grouped.counts, strict=True)) == expected
    assert reasons == {"avro_mismatch": 80}
    assert sorted({exc.reason for _, exc in grouped.skipped}) == ["avro_mismatch"]
    assert len(grouped.skipped) == 80
    assert {key[0][2] for key in expected} == {"none", "v2", "v3", "v4"}  # v1: the default
