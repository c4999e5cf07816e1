"""Settings: the seed's file loads; each bad file, key or value stops with one line naming them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bucket_app import settings as settings_module
from bucket_app.errors import SettingsError
from bucket_app.settings import load, parse_duration_s
from tests.support import REPO
from tests.support.settings import MSG_MAP, SEED_INI, SQLITE_SCHEMA, replace_line, write_config


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as caught:
        load(path, environ or {})
    message = str(caught.value)
    assert "\n" not in message, "one line"
    return message


def test_seed_example_loads_with_resolved_paths_and_defaults(tmp_path):
    settings = load(write_config(tmp_path), {})
    assert settings.brokers == ("127.0.0.1:9092",)
    assert settings.topic == "test"
    assert settings.avro_schema is None
    assert settings.bucket_interval_s == 20
    assert settings.bucket_type == "epoch"
    assert settings.msg_map == MSG_MAP
    assert tuple(settings.sqlite_schema) == (
        "server_name", "topic", "bucket_start", "bucket_end", "count")
    # the seed's bare 10 and 10 read as minutes: counts survive long enough to be queried
    assert settings.clean_interval_s == 600
    assert settings.clean_freq_s == 600
    assert settings.snapshot_path == tmp_path / "data" / "snapshot-memory.sqlite3"
    assert settings.web_port == 5000
    assert settings.web_host == "127.0.0.1"
    assert settings.snapshot_interval_s == 0.5


def test_repo_settings_ini_loads():
    settings = load(REPO / "settings.ini", {})
    assert settings.sqlite_table == "default"


def test_path_from_environment_and_default(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    assert settings_module.settings_path({"BUCKET_APP_SETTINGS": str(path)}) == path
    monkeypatch.chdir(tmp_path)
    assert settings_module.settings_path({}) == tmp_path / "settings.ini"


def test_environment_overrides_one_key(tmp_path):
    settings = load(write_config(tmp_path), {"BUCKET_APP_TOPIC": "other", "PORT": "8123"})
    assert settings.topic == "other"
    assert settings.web_port == 8123


def test_environment_override_error_names_the_variable(tmp_path):
    message = load_error(write_config(tmp_path), {"BUCKET_APP_BUCKET_INTERVAL": "7"})
    assert message.startswith("environment: BUCKET_APP_BUCKET_INTERVAL = '7'")


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1w", 604800),
     ("250ms", 0.25), ("10", 600), (" 1.5h ", 5400)],
)
def test_durations(raw, seconds):
    assert parse_duration_s(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("brokers", "localhost:2181", "ZooKeeper"),
        ("brokers", "zk1:2181,zk2:2181/kafka", "ZooKeeper"),
        ("brokers", "localhost", "is not host:port"),
        ("brokers", "", "at least one"),
        ("topic", "bad topic!", "not a valid Kafka topic name"),
        ("bucket_interval", "7", "must divide the 86400 seconds"),
        ("bucket_interval", "twenty", "not a whole number"),
        ("bucket_interval", "0", "greater than 0"),
        ("bucket_type", "unix", "must be one of epoch, iso"),
        ("clean_interval", "soon", "not a duration"),
        ("clean_interval", "5s", "at least bucket_interval"),
        ("clean_freq", "0", "longer than 0"),
        ("web_port", "70000", "not a TCP port"),
        ("msg_map_schema", "missing.json", "not found"),
        ("sqlite_schema", "missing.json", "not found"),
        ("avro_val_schema", "missing.avsc", ""),
    ],
)
def test_bad_value_names_file_key_and_value(tmp_path, key, value, expected):
    ini = replace_line(SEED_INI, key, value)
    if key == "web_port":
        ini += "web_port = 70000\n"
    path = write_config(tmp_path, ini)
    message = load_error(path)
    assert message.startswith(f"{path}: [")
    assert f"] {key} = {value!r}" in message
    assert expected in message


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.ini")
    assert str(tmp_path / "nope.ini") in message
    assert "not found" in message


def test_unknown_key_and_section(tmp_path):
    path = write_config(tmp_path, SEED_INI + "colour = blue\n")
    message = load_error(path)
    assert "[HTTPEndpointSetting] colour = 'blue': unknown key" in message
    path = write_config(tmp_path, SEED_INI + "[Extra]\nx = 1\n")
    assert "[Extra]: unknown section" in load_error(path)


def test_missing_required_key(tmp_path):
    ini = "\n".join(line for line in SEED_INI.splitlines() if not line.startswith("topic"))
    message = load_error(write_config(tmp_path, ini))
    assert "[KafkaSettings] topic: missing" in message


def test_unparsable_ini(tmp_path):
    message = load_error(write_config(tmp_path, "this is not ini\n"))
    assert "cannot read settings" in message


@pytest.mark.parametrize(
    ("msg_map", "schema", "key", "expected"),
    [
        (MSG_MAP, {k: v for k, v in SQLITE_SCHEMA.items() if k != "count"}, "sqlite_schema",
         "lacks column 'count'"),
        (MSG_MAP, {k: v for k, v in SQLITE_SCHEMA.items() if k != "topic"}, "sqlite_schema",
         "lacks column 'topic'"),
        (MSG_MAP, SQLITE_SCHEMA | {"extra": "TEXT"}, "sqlite_schema", "neither mapped"),
        (MSG_MAP, SQLITE_SCHEMA | {"topic": "VARCHARZ"}, "sqlite_schema", "has type 'VARCHARZ'"),
        (["not", "an", "object"], SQLITE_SCHEMA, "msg_map_schema", "must hold a JSON object"),
        ({"a": "x", "b": "x"}, SQLITE_SCHEMA, "msg_map_schema", "same column"),
        ({"a": "count"}, SQLITE_SCHEMA, "msg_map_schema", "reserved"),
        ({"a": 5}, SQLITE_SCHEMA, "msg_map_schema", "column name string"),
    ],
)
def test_schema_files_checked_against_each_other(tmp_path, msg_map, schema, key, expected):
    path = write_config(tmp_path, msg_map=msg_map, schema=schema)
    message = load_error(path)
    section = "MsgSettings" if key == "msg_map_schema" else "HTTPEndpointSetting"
    assert message.startswith(f"{path}: [{section}] {key} = ")
    assert expected in message


def test_invalid_json_schema_file(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "sqlite_schema.json").write_text("{not json")
    assert "is not valid JSON" in load_error(path)


def test_rst_id_in_schema_is_accepted_and_owned_by_bucket_app(tmp_path):
    settings = load(write_config(tmp_path, schema=SQLITE_SCHEMA | {"RST_ID": "INTEGER"}), {})
    assert "RST_ID" not in settings.sqlite_schema


def test_avro_schema_loaded(tmp_path):
    ini = replace_line(SEED_INI, "avro_val_schema", str(REPO / "schemas" / "example.avsc"))
    settings = load(write_config(tmp_path, ini), {})
    assert settings.avro_schema is not None
    assert settings.avro_schema["type"] == "record"


def test_worker_start_with_bad_setting_is_one_line_exit_2(tmp_path):
    path = write_config(tmp_path, replace_line(SEED_INI, "brokers", "localhost:2181"))
    proc = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "bucket_app", "worker"],
        env={"BUCKET_APP_SETTINGS": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"bucket_app: {path}: [KafkaSettings] brokers = 'localhost:2181'")
    assert "Traceback" not in proc.stderr


def registry_ini(**values: str) -> str:
    extra = "".join(f"{key} = {value}\n" for key, value in values.items())
    return SEED_INI.replace("avro_val_schema = None\n", "avro_val_schema = None\n" + extra)


def test_schema_registry_keys_default_to_none_and_load(tmp_path):
    loaded = load(write_config(tmp_path))
    assert (loaded.schema_registry_url, loaded.schema_registry_username,
            loaded.schema_registry_password, loaded.schema_registry_cafile) == (
        None, None, None, None)
    (tmp_path / "ca.pem").write_text("not checked here")
    path = write_config(tmp_path, registry_ini(
        schema_registry_url="https://psrc-x.eu-west-1.aws.confluent.cloud/",
        schema_registry_username="KEY", schema_registry_cafile="ca.pem"))
    loaded = load(path, {"BUCKET_APP_SCHEMA_REGISTRY_PASSWORD": "SECRET"})
    assert loaded.schema_registry_url == "https://psrc-x.eu-west-1.aws.confluent.cloud"
    assert loaded.schema_registry_password == "SECRET"
    assert loaded.schema_registry_cafile == tmp_path / "ca.pem"
    assert "SECRET" not in repr(loaded)


@pytest.mark.parametrize(("values", "key", "expected"), [
    ({"schema_registry_url": "localhost:8081"}, "schema_registry_url", "not an http"),
    ({"schema_registry_url": "http://u:p@h:8081"}, "schema_registry_url", "credentials"),
    ({"schema_registry_url": "http://h:port"}, "schema_registry_url", "port"),
    ({"schema_registry_username": "u", "schema_registry_password": "p"},
     "schema_registry_username", "schema_registry_url is none"),
    ({"schema_registry_url": "http://h:8081", "schema_registry_username": "u"},
     "schema_registry_password", "go together"),
    ({"schema_registry_url": "http://h:8081", "schema_registry_cafile": "ca.pem"},
     "schema_registry_cafile", "https://"),
    ({"schema_registry_url": "https://h:8081", "schema_registry_cafile": "nope.pem"},
     "schema_registry_cafile", "not found"),
])
def test_bad_schema_registry_settings_name_the_key(tmp_path, values, key, expected):
    message = load_error(write_config(tmp_path, registry_ini(**values)))
    assert f"] {key} = " in message and expected in message, message


def test_schema_registry_password_is_masked_in_errors(tmp_path):
    path = write_config(tmp_path, registry_ini(schema_registry_password="hunter2"))
    message = load_error(path)
    assert "hunter2" not in message and "schema_registry_password = '***'" in message
