"""The ``bucket-app`` command line without Kafka: check's table, the demo messages, rendering."""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import socket
import threading
import time

import fastavro.validation
import pytest

from bucket_app import cli
from bucket_app.counting.buckets import FieldMap, TimeField, bucket_start
from bucket_app.counting.decode import AvroDecoder, JsonDecoder, load_avro_schema
from tests.support import REPO
from tests.support.settings import SEED_INI, replace_line, write_config

NOW = 1_796_000_000.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Only what a test sets configures the settings: no inherited BUCKET_APP_* or $PORT."""
    for name in list(os.environ):
        if name.startswith("BUCKET_APP_") or name == "PORT":
            monkeypatch.delenv(name)


def check_table(out: str) -> dict[str, tuple[str, str]]:
    """``key -> (value, source)`` from check's table (after its first line and header)."""
    lines = out.splitlines()
    assert lines[0].startswith("bucket_app: ") and "is valid" in lines[0]
    assert lines[1].split() == ["section", "key", "value", "source"]
    assert set(lines[2]) <= {"-", " "}
    rows = {}
    for line in lines[3:]:
        section, key, value, source = line.split(None, 3)
        rows[key] = (value, source)
    return rows


# ---- check ------------------------------------------------------------------------------------


def test_check_shows_every_key_with_its_source(tmp_path, monkeypatch, capsys):
    ini = SEED_INI.replace("[MsgSettings]", "sasl_password = hunter2\n\n[MsgSettings]")
    path = write_config(tmp_path, ini)
    monkeypatch.setenv("BUCKET_APP_TOPIC", "from-env")
    monkeypatch.setenv("BUCKET_APP_HTTP_TOKEN", "s3cret-token")
    assert cli.main(["check", "--settings", str(path)]) == 0
    out = capsys.readouterr().out
    rows = check_table(out)
    assert set(rows) == {key.name for key in cli.settings_module.KEYS}
    assert rows["brokers"] == ("127.0.0.1:9092", "file")
    assert rows["topic"] == ("from-env", "environment (BUCKET_APP_TOPIC)")
    assert rows["partitions"] == ("6", "default")
    assert rows["web_port"] == ("5000", "default")
    # secrets are masked wherever they come from; the secret text never appears
    assert rows["sasl_password"] == ("***", "file")
    assert rows["http_token"] == ("***", "environment (BUCKET_APP_HTTP_TOKEN)")
    assert "hunter2" not in out and "s3cret-token" not in out
    # the columns line up: every source starts at the same character
    lines = out.splitlines()[1:]
    starts = {line.index(source) for line, (_, source) in zip(
        lines[2:], rows.values(), strict=True)}
    assert starts == {lines[0].index("source")}


def test_check_reads_settings_from_the_environment_variable_and_port(tmp_path, monkeypatch,
                                                                      capsys):
    path = write_config(tmp_path)
    monkeypatch.setenv("BUCKET_APP_SETTINGS", str(path))
    monkeypatch.setenv("PORT", "8123")
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out.splitlines()[0]
    rows = check_table(out)
    assert rows["web_port"] == ("8123", "environment (PORT)")
    assert rows["http_token"] == ("none", "default")  # unset secrets say so


def test_check_bad_setting_is_one_line_and_exit_2(tmp_path, capsys):
    path = write_config(tmp_path, replace_line(SEED_INI, "brokers", "localhost:2181"))
    assert cli.main(["check", "--settings", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("bucket_app: ")
    assert "brokers = 'localhost:2181'" in lines[0] and "ZooKeeper" in lines[0]


def test_check_bad_secret_value_is_not_leaked(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path, replace_line(SEED_INI, "brokers", "127.0.0.1:9092")
                        .replace("[MsgSettings]", "security_protocol = SASL_SSL\n"
                                 "[MsgSettings]"))
    monkeypatch.setenv("BUCKET_APP_SASL_PASSWORD", "hunter2")
    assert cli.main(["check", "--settings", str(path)]) == 2  # no sasl_username
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "sasl_username" in err and "hunter2" not in err


def test_missing_settings_file_exits_2(tmp_path, capsys):
    assert cli.main(["check", "--settings", str(tmp_path / "nope.ini")]) == 2
    assert "settings file not found" in capsys.readouterr().err


def test_uses_local_broker(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    assert cli.main(["uses-local-broker", "--settings", str(path)]) == 0
    monkeypatch.setenv("BUCKET_APP_BROKERS", "kafka.example:9092")
    assert cli.main(["uses-local-broker", "--settings", str(path)]) == 1


def test_no_command_is_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BUCKET_APP_SETTINGS", str(write_config(tmp_path)))
    assert cli.main([]) == 0
    assert "is valid" in capsys.readouterr().out


def test_bad_arguments_exit_2(capsys):
    for argv in (["produce", "--keys", "0"], ["produce", "--rate", "-1"],
                 ["query", "SELECT 1", "--format", "xml"], ["nonsense"]):
        with pytest.raises(SystemExit) as caught:
            cli.main(argv)
        assert caught.value.code == 2, argv
    capsys.readouterr()


# ---- produce: the demo messages ---------------------------------------------------------------


def test_json_messages_fill_the_mapping_with_keys_combinations():
    msg_map = {"origin_server": "server_name", "topic": "topic"}
    demo = cli.DemoMessages(msg_map, "timestamp", "epoch", keys=3)
    messages = [demo.message(i, NOW) for i in range(9)]
    assert messages[0] == {"origin_server": "origin_server-0", "topic": "topic-0",
                           "timestamp": int(NOW)}
    assert messages[4] == {"origin_server": "origin_server-1", "topic": "topic-1",
                           "timestamp": int(NOW)}
    # exactly `keys` distinct field combinations, each as often
    fields = FieldMap(msg_map)
    combos = [fields.extract(JsonDecoder().decode(demo.encode(m))) for m in messages]
    assert len(set(combos)) == 3
    assert all(combos.count(c) == 3 for c in combos)


def test_json_dotted_paths_nest_and_iso_time_reads_back():
    msg_map = {"origin_server": "server_name", "meta.host": "host", "meta.dc.name": "dc"}
    demo = cli.DemoMessages(msg_map, "meta.at", "iso", keys=2)
    message = demo.message(1, NOW + 0.75)
    assert message == {"origin_server": "origin_server-1",
                       "meta": {"host": "host-1", "dc": {"name": "name-1"}, "at": message[
                           "meta"]["at"]}}
    assert message["meta"]["at"].endswith("Z")
    decoded = JsonDecoder().decode(demo.encode(message))
    assert FieldMap(msg_map).extract(decoded) == ("origin_server-1", "host-1", "name-1")
    assert TimeField("meta.at", "iso").get(decoded) == int(NOW)


def test_epoch_time_lands_in_the_bucket_of_the_event_time():
    demo = cli.DemoMessages({"a": "a"}, "ts", "epoch", keys=1)
    decoded = JsonDecoder().decode(demo.encode(demo.message(0, NOW + 19.9)))
    assert bucket_start(TimeField("ts", "epoch").get(decoded), 20) == bucket_start(NOW + 19.9, 20)


def test_conflicting_paths_are_refused():
    with pytest.raises(ValueError, match="parent"):
        cli.DemoMessages({"meta.host": "host", "meta": "m"}, "ts", "epoch", keys=1)


def test_spread_time_stays_within_the_spread():
    assert cli.spread_time(7, NOW, 0) == NOW
    times = [cli.spread_time(i, NOW, 60) for i in range(1000)]
    assert all(NOW - 60 < t <= NOW for t in times)
    assert max(times) - min(times) > 59  # and covers it


def test_avro_records_validate_and_decode_with_the_example_schema():
    schema = load_avro_schema(REPO / "schemas" / "example.avsc")
    msg_map = {"origin_server": "server_name", "meta.host": "host"}
    demo = cli.DemoMessages(msg_map, "timestamp", "epoch", keys=4, avro_schema=schema)
    assert demo.missing == ()
    unmapped = set()
    for i in range(8):
        record = demo.message(i, NOW)
        assert fastavro.validation.validate(record, schema, raise_errors=True)
        decoded = AvroDecoder(schema).decode(demo.encode(record))
        assert FieldMap(msg_map).extract(decoded) == (f"origin_server-{i % 4}",
                                                      f"host-{i % 4}")
        unmapped.add(decoded["topic"])  # an unmapped field: fastavro's value for the run
        assert TimeField("timestamp", "epoch").get(decoded) == int(NOW)
    assert len(unmapped) == 1 and isinstance(unmapped.pop(), str)


AVRO_RICH = {
    "type": "record", "name": "Rich", "namespace": "t",
    "fields": [
        {"name": "server", "type": ["null", "string"], "default": None},
        {"name": "code", "type": "int"},
        {"name": "level", "type": {"type": "enum", "name": "Level",
                                   "symbols": ["LOW", "MID", "HIGH"]}},
        {"name": "ratio", "type": "double", "default": 0.5},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "blob", "type": "bytes", "default": "\u00ff"},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "ctx", "type": ["null", {"type": "record", "name": "Ctx", "fields": [
            {"name": "region", "type": "string"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "prev", "type": ["null", "t.Level"], "default": None},
        ]}], "default": None},
        {"name": "note", "type": "string", "default": "n/a"},
    ],
}


@pytest.mark.parametrize("bucket_field", ["ctx.at", "when"])
def test_avro_records_of_a_rich_schema_validate(tmp_path, bucket_field):
    raw = copy.deepcopy(AVRO_RICH)
    raw["fields"].append({"name": "when", "type": "string"})
    path = tmp_path / "rich.avsc"
    path.write_text(json.dumps(raw))
    schema = load_avro_schema(path)
    msg_map = {"server": "server", "code": "code", "level": "level", "ctx.region": "region",
               "not.there": "gone"}
    bucket_type = "epoch" if bucket_field == "ctx.at" else "iso"
    demo = cli.DemoMessages(msg_map, bucket_field, bucket_type, keys=3, avro_schema=schema)
    assert demo.missing == ("not.there",)
    seen = set()
    for i in range(6):
        record = demo.message(i, NOW)
        assert fastavro.validation.validate(record, schema, raise_errors=True)
        decoded = AvroDecoder(schema).decode(demo.encode(record))
        assert decoded["ratio"] == 0.5 and decoded["note"] == "n/a"  # defaults kept
        assert decoded["blob"] == b"\xff"
        assert TimeField(bucket_field, bucket_type).get(decoded) == int(NOW)
        seen.add(FieldMap(msg_map).extract(decoded))
    assert seen == {(f"server-{k}", k, ["LOW", "MID", "HIGH"][k], f"region-{k}", None)
                    for k in range(3)}


def test_avro_time_field_of_the_wrong_type_is_refused(tmp_path):
    schema = load_avro_schema(REPO / "schemas" / "example.avsc")
    with pytest.raises(ValueError, match="iso needs a string"):
        cli.DemoMessages({"topic": "topic"}, "timestamp", "iso", keys=1, avro_schema=schema)
    with pytest.raises(ValueError, match="not a field of the Avro schema"):
        cli.DemoMessages({"topic": "topic"}, "ts", "epoch", keys=1, avro_schema=schema)


def test_produce_summary_names_count_topic_and_partitions():
    assert cli.produce_summary("demo", {3: 100, 0: 400}) == (
        "sent 500 to topic demo (partitions 0: 400, 3: 100)")


def test_demo_messages_build_fast_enough():
    demo = cli.DemoMessages({"origin_server": "s", "topic": "t"}, "timestamp", "epoch", keys=5)
    started = time.perf_counter()
    for i in range(10_000):
        demo.encode(demo.message(i, NOW))
    assert time.perf_counter() - started < 2


# ---- query: rendering -------------------------------------------------------------------------


COLUMNS = ["server_name", "n", "ratio", "meta"]
ROWS = [
    {"server_name": "Iceman", "n": 500, "ratio": 0.5, "meta": None},
    {"server_name": "a,b \"quoted\"", "n": 7, "ratio": None, "meta": {"k": [1, 2]}},
]


def test_render_table_aligns_columns_and_right_aligns_numbers():
    lines = cli.render(COLUMNS, ROWS, "table").splitlines()
    assert len(lines) == 4
    assert lines[0].split() == COLUMNS
    spans = [m.span() for m in re.finditer(r"-+", lines[1])]
    assert len(spans) == 4

    def cell(line: str, column: int) -> str:
        start, end = spans[column]
        return line[start:end]

    # text starts at its column, numbers end at it; NULL for null; objects as JSON
    assert [cell(line, 0) for line in lines] == [
        "server_name ", "-" * len(cell(lines[1], 0)), "Iceman      ", 'a,b "quoted"']
    assert [cell(line, 1).lstrip() for line in lines] == ["n", "---", "500", "7"]
    assert cell(lines[3], 1).endswith("7") and cell(lines[0], 1).endswith("n")
    assert cell(lines[2], 2).strip() == "0.5" and cell(lines[3], 2).strip() == "NULL"
    assert lines[2].endswith("NULL") and lines[3].endswith('{"k":[1,2]}')


def test_render_table_without_rows_has_a_header():
    assert cli.render(["n"], [], "table") == "n\n-\n"


def test_render_csv_quotes_and_writes_null_as_empty():
    assert cli.render(COLUMNS, ROWS, "csv") == (
        'server_name,n,ratio,meta\n'
        'Iceman,500,0.5,\n'
        '"a,b ""quoted""",7,,"{""k"":[1,2]}"\n')


def test_render_json_is_the_rows():
    assert json.loads(cli.render(COLUMNS, ROWS, "json")) == ROWS


def test_query_against_nothing_says_not_reachable(capsys):
    # a port nothing listens on: bind one and close it
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert cli.main(["query", "SELECT 1", "--url", url, "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"the worker is not reachable at {url}" in err


def test_query_refuses_other_schemes(capsys):
    assert cli.main(["query", "SELECT 1", "--url", "file:///etc/passwd"]) == 2
    assert "not an http" in capsys.readouterr().err


class _ErrorHandler(http.server.BaseHTTPRequestHandler):
    """Answers every POST as the worker answers bad SQL, and records what it was sent."""

    seen: list[tuple[str, dict, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body, self.headers.get("Authorization")))
        payload = json.dumps({"error": "no such table: nope\n(line 2)", "status": 400}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def test_query_http_error_prints_the_message_on_one_line(monkeypatch, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _ErrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("BUCKET_APP_HTTP_TOKEN", "tok")
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert cli.main(["query", "SELECT * FROM nope WHERE a = ?", "--url", url,
                         "-p", "42", "-p", "x"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "bucket_app: HTTP 400: no such table: nope (line 2)\n"
    assert _ErrorHandler.seen == [("/api/v1/sql", {"sql": "SELECT * FROM nope WHERE a = ?",
                                                   "params": [42, "x"]}, "Bearer tok")]
