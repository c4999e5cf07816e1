"""Property tests of settings loading: any text loads or stops with one line naming the place.

Whatever an operator writes - in one key of settings.ini, in its environment override, or as
the whole file - :func:`~bucket_app.settings.load` returns settings or raises ``SettingsError``
whose message is one line naming the file (or the environment variable) and the key. No other
exception may escape: start-up turns SettingsError into a clean exit, anything else into a
traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from bucket_app.counting.classify import Classifier
from bucket_app.errors import SettingsError
from bucket_app.settings import KEYS, SECRET_KEYS, Settings, load
from tests.support.fuzz import awkward_text, json_values
from tests.support.settings import SEED_INI, scratch_dir, write_config

KEY_NAMES = [key.name for key in KEYS]
KEYS_BY_NAME = {key.name: key for key in KEYS}

# Values with what breaks parsers and paths: line breaks, NUL, huge numbers, units, lists.
values = st.one_of(
    awkward_text,
    st.text(max_size=30),
    st.sampled_from([
        "a\x00b", "x\ny", "~nouser\x00", "9" * 5000, "1e400", "nan", "inf s", "-1", "0",
        "1\u0661", "10 w", "0.0001ms", "host:1,host:2181", "a..b", ".", "", " ", "none",
        "PLAINTEXT", "sasl_ssl", "/", "/dev/null", "-", "settings.ini", "%(x)s", "[x]",
    ]),
    st.integers().map(str),
)

SETTINGS_DIR = scratch_dir("fuzz-settings")
SETTINGS_FILE = write_config(SETTINGS_DIR)


def load_or_error(path: Path, environ: dict[str, str]) -> Settings | str:
    try:
        return load(path, environ)
    except SettingsError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        return message


def assert_names_place(message: str, name: str, origin: str) -> None:
    key = KEYS_BY_NAME[name]
    if origin == "env":
        assert message.startswith(f"environment: {key.env} = "), message
    else:
        assert message.startswith(f"{SETTINGS_FILE}: [{key.section}] {name}"), message


@given(st.sampled_from(KEY_NAMES), values)
@example("data_dir", "a\x00b")  # Path.resolve: ValueError "embedded null byte" escaped
@example("ssl_cafile", "9" * 5000)  # is_file: OSError "File name too long" escaped
@example("sqlite_db", "9" * 5000)
@example("msg_map_schema", "x\ny")  # "file ...x<newline>y not found": two lines
@example("bucket_field", "a..b")  # loaded, then the classifier's ValueError at start-up
@example("bucket_field", ".")
@example("http_token", "secret\n")
def test_any_value_of_any_key_from_the_environment_loads_or_names_the_key(
        name: str, value: str) -> None:
    answer = load_or_error(SETTINGS_FILE, {KEYS_BY_NAME[name].env: value})
    if isinstance(answer, Settings):
        Classifier(answer)  # what loads, the worker can use: field paths were checked
    else:
        if answer.startswith("environment:"):
            assert_names_place(answer, name, "env")
        if name in SECRET_KEYS and value.strip():
            assert value.strip() not in answer.replace("environment", "")


@given(st.sampled_from(KEY_NAMES), values.filter(lambda text: "\n" not in text
                                                 and "\r" not in text))
@example("brokers", "%(x)s")
@example("sqlite_db", "a\x00b")
@example("avro_val_schema", "~nouser\x00")
def test_any_value_of_any_key_in_the_file_loads_or_names_file_and_key(
        name: str, value: str) -> None:
    key = KEYS_BY_NAME[name]
    lines = [line for line in SEED_INI.splitlines() if line.split("=")[0].strip() != name]
    at = lines.index(f"[{key.section}]") + 1
    lines.insert(at, f"{name} = {value}")
    path = SETTINGS_DIR / "one-key.ini"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        load(path, {})
    except SettingsError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(str(path)), message
        if "cannot read settings" not in message:  # configparser's own syntax complaints
            named = re.match(rf"{re.escape(str(path))}: \[(\w+)\] (\w+)", message)
            assert named and named.group(2) in KEYS_BY_NAME, message


ini_lines = st.one_of(
    st.sampled_from(["[KafkaSettings]", "[MsgSettings]", "[HTTPEndpointSetting]", "[Other]",
                     "[", "]", "=", "brokers", "topic = t", "  continued", "; comment",
                     "# comment", "bucket_interval = 20", "brokers: a:1", "[KafkaSettings"]),
    st.text(max_size=20),
    st.builds(lambda key, value: f"{key} = {value}", st.sampled_from(KEY_NAMES), values),
)


@given(st.one_of(st.lists(ini_lines, max_size=12).map("\n".join), st.text(max_size=200),
                 st.binary(max_size=100)))
@example(b"\xff\xfe[KafkaSettings]")
@example("[KafkaSettings]\nbrokers = a:1\nbrokers = b:2\n")
@example("[KafkaSettings]\n[KafkaSettings]\n")
@example("\ufeff[KafkaSettings]\n")
@example("[KafkaSettings]\nbrokers = a:1\n  b:2\n")
def test_any_file_loads_or_stops_with_one_line(text: str | bytes) -> None:
    path = SETTINGS_DIR / "any.ini"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load(path, {})
    except SettingsError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(str(path)), message


@given(st.one_of(json_values, st.dictionaries(awkward_text, st.one_of(awkward_text, json_values),
                                              max_size=4)),
       st.one_of(json_values, st.dictionaries(awkward_text, st.sampled_from(
           ["TEXT", "integer", "REAL", "blob", "nope", 1, None]), max_size=6)))
@example({"a..b": "x"}, {"x": "TEXT", "bucket_start": "INTEGER", "bucket_end": "INTEGER",
                         "count": "INTEGER"})
@example({"": "x"}, {"x": "TEXT", "bucket_start": "INTEGER", "bucket_end": "INTEGER",
                     "count": "INTEGER"})
def test_any_mapping_files_load_or_name_their_key(msg_map: object, schema: object) -> None:
    directory = SETTINGS_DIR / "maps"
    directory.mkdir(exist_ok=True)
    path = write_config(directory, SEED_INI, msg_map, schema)
    answer = load_or_error(path, {})
    if isinstance(answer, Settings):
        Classifier(answer)
    else:
        assert answer.startswith(f"{path}: ["), answer
