"""The state identity: a stable fingerprint of just the settings that give a count its meaning."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace

import pytest

from bucket_app import identity
from bucket_app.settings import load
from bucket_app.snapshot.reader import changelog_topic
from tests.support.settings import SEED_INI, write_config

SCHEMA = {"type": "record", "name": "Msg", "fields": [
    {"name": "origin_server", "type": "string"}, {"name": "topic", "type": "string"},
    {"name": "timestamp", "type": "long"}]}


@pytest.fixture
def settings(tmp_path):
    return load(write_config(tmp_path, SEED_INI), {})


def test_fingerprint_is_short_hex_and_stable(settings, tmp_path):
    fp = identity.fingerprint(settings)
    assert re.fullmatch(r"[0-9a-f]{10}", fp)
    # Pinned: the fingerprint names the changelog and consumer group, so a change of the
    # canonical form (or of the hash) would silently recount every deployment.
    canonical = (b'{"bucket_field":"timestamp","bucket_interval":20,"bucket_type":"epoch",'
                 b'"isolation_level":"read_committed",'
                 b'"msg_map":[["origin_server","server_name"],["topic","topic"]],'
                 b'"topic":"test","value_format":"json"}')
    assert fp == hashlib.sha256(canonical).hexdigest()[:10] == "15dad83f6e"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = load(write_config(elsewhere, SEED_INI), {})
    assert identity.fingerprint(again) == fp
    assert identity.state_id(settings) == f"bucket_app-{fp}"


def test_read_uncommitted_keeps_the_state_counted_before_isolation_level_existed(settings):
    """Every state before isolation_level was a setting read uncommitted: under
    read_uncommitted it keeps its name (and its counts); read_committed counts afresh, since
    its counts would otherwise mix in the aborted records the old state counted."""
    before = (b'{"bucket_field":"timestamp","bucket_interval":20,"bucket_type":"epoch",'
              b'"msg_map":[["origin_server","server_name"],["topic","topic"]],'
              b'"topic":"test","value_format":"json"}')
    uncommitted = replace(settings, isolation_level="read_uncommitted")
    assert identity.fingerprint(uncommitted) == hashlib.sha256(before).hexdigest()[:10]
    assert identity.fingerprint(uncommitted) == "6832e90d7a"
    line = identity.startup_line(settings, identity.owner_record(uncommitted), "counts")
    assert 'isolation_level "read_uncommitted" -> "read_committed"' in line


def test_every_name_follows_the_state(settings):
    state = identity.state_id(settings)
    assert changelog_topic(settings) == f"{state}-counts-changelog"
    assert identity.tabledir(settings) == settings.data_dir / "tables" / state
    assert identity.running_marker(settings) == settings.data_dir / f"{state}.running"
    assert json.loads(identity.owner_record(settings))["state"] == state


@pytest.mark.parametrize(("key", "value"), [
    ("topic", "another"),
    ("bucket_interval_s", 30),
    ("bucket_field", "ts"),
    ("bucket_type", "iso"),
    ("msg_map", {"origin_server": "server_name", "host": "topic"}),  # another field
    ("msg_map", {"origin_server": "server", "topic": "topic"}),  # another column
    ("msg_map", {"topic": "topic", "origin_server": "server_name"}),  # reordered
    ("msg_map", {"origin_server": "server_name"}),  # one field fewer
    ("avro_schema", SCHEMA),  # Avro instead of JSON
    ("isolation_level", "read_uncommitted"),  # aborted transactions' records counted too
])
def test_fingerprint_changes_with_each_bound_key(settings, key, value):
    changed = replace(settings, **{key: value})
    assert identity.fingerprint(changed) != identity.fingerprint(settings)
    assert identity.state_id(changed) != identity.state_id(settings)


def test_app_id_prefixes_the_state(settings):
    other = replace(settings, app_id="mine")
    assert identity.fingerprint(other) == identity.fingerprint(settings)
    assert identity.state_id(other) == f"mine-{identity.fingerprint(settings)}"


@pytest.mark.parametrize(("key", "value"), [
    ("web_port", 5999), ("web_host", "0.0.0.0"),  # noqa: S104 - a value, not a bind
    ("snapshot_interval_s", 5.0), ("clean_interval_s", 3600.0), ("clean_freq_s", 60.0),
    ("max_future_skew_s", 10.0), ("partitions", 12), ("replication_factor", 3),
    ("brokers", ("elsewhere:9092",)), ("session_timeout_s", 60.0), ("sql_row_limit", 5),
    ("sqlite_table", "other"), ("sql_time_limit_s", 9.0), ("startup_timeout_s", 5.0),
])
def test_fingerprint_ignores_unrelated_keys(settings, key, value):
    assert identity.fingerprint(replace(settings, **{key: value})) == identity.fingerprint(
        settings)


def test_avro_schema_counts_by_what_it_decodes_not_by_its_file(settings, tmp_path):
    from fastavro import parse_schema

    avro = replace(settings, avro_schema=parse_schema(dict(SCHEMA)))
    documented = replace(settings, avro_schema=parse_schema({**SCHEMA, "doc": "the same bytes"}),
                         avro_schema_path=tmp_path / "moved.avsc")
    assert identity.fingerprint(documented) == identity.fingerprint(avro)
    wider = {**SCHEMA, "fields": [*SCHEMA["fields"], {"name": "extra", "type": "int"}]}
    assert identity.fingerprint(replace(settings, avro_schema=parse_schema(wider))) != (
        identity.fingerprint(avro))


def test_a_registry_reader_binds_its_subject_and_a_file_its_schema(settings):
    """Without a file the reader is the subject's latest version: the state binds the subject,
    so a new version registered there does not count the topic again; a file reader binds its
    schema, with or without a registry, so adding one keeps the state."""
    from fastavro import parse_schema

    registry = replace(settings, schema_registry_url="https://registry.example:8081")
    assert identity.bound(registry)["value_format"] == "registry subject test-value"
    assert identity.fingerprint(registry) != identity.fingerprint(settings)
    assert identity.fingerprint(replace(registry, schema_registry_username="KEY",
                                        schema_registry_password="secret")) == (
        identity.fingerprint(registry))
    avro = replace(settings, avro_schema=parse_schema(dict(SCHEMA)))
    assert identity.fingerprint(replace(avro, schema_registry_url="https://r:8081")) == (
        identity.fingerprint(avro))


def test_startup_line_names_the_state_and_what_changed(settings):
    line = identity.startup_line(settings, None, "counts")
    state = identity.state_id(settings)
    assert "\n" not in line
    assert f"counting under state {state}" in line and f"{state}-counts-changelog" in line
    # same state again: nothing about a previous one
    assert identity.startup_line(settings, identity.owner_record(settings), "counts") == line

    old = replace(settings, topic="before", bucket_interval_s=60)
    old_state = identity.state_id(old)
    line = identity.startup_line(settings, identity.owner_record(old), "counts")
    assert "\n" not in line
    assert 'topic "before" -> "test"' in line and "bucket_interval 60 -> 20" in line
    assert "bucket_field" not in line.split("changed:")[1]  # unchanged keys are not listed
    assert f"{old_state}-counts-changelog" in line
    assert str(settings.data_dir / "tables" / old_state) in line
    assert "left untouched" in line and f"--delete --topic {old_state}-counts-changelog" in line


def test_startup_line_after_a_worker_from_before_state_identities(settings):
    legacy = "app_id = bucket_app\ntopic = test\n"
    line = identity.startup_line(settings, legacy, "counts")
    assert "bucket_app-counts-changelog" in line
    assert str(settings.data_dir / "v1" / "tables") in line
    legacy_other = "app_id = bucket_app\ntopic = before\n"
    assert 'topic "before" -> "test"' in identity.startup_line(settings, legacy_other, "counts")
    # an unreadable owner file is not an error
    assert "last worker" not in identity.startup_line(settings, "garbage", "counts")
