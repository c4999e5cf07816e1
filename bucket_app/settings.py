"""Settings: settings.ini (the seed's sections and keys) read and validated once at start-up.

The file is found through ``BUCKET_APP_SETTINGS`` (default ``./settings.ini``); relative paths in
it are relative to the file. Every key can be overridden by an environment variable named
``BUCKET_APP_<KEY>`` (for example ``BUCKET_APP_BROKERS``). All keys are declared once in
:data:`KEYS` — name, section, kind, default, help — and every problem raises
:class:`~bucket_app.errors.SettingsError` with one line naming the file, the key and the value.
Nothing here connects to anything; :func:`load` returns a frozen :class:`Settings`.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bucket_app.counting.buckets import FieldMap, TimeField
from bucket_app.counting.decode import load_avro_schema
from bucket_app.errors import InvalidValue, SettingsError

SETTINGS_ENV = "BUCKET_APP_SETTINGS"
ENV_PREFIX = "BUCKET_APP_"
SECONDS_PER_DAY = 86_400
BUCKET_COLUMNS = ("bucket_start", "bucket_end", "count")
# Columns bucket_app adds to every snapshot row (bucket_app.counting.lifecycle)
LATE_COLUMN, FINAL_COLUMN = "late", "final"
RST_COLUMN = "RST_ID"
SQLITE_TYPES = frozenset({"TEXT", "INTEGER", "INT", "REAL", "NUMERIC", "BLOB", "BIGINT", "FLOAT"})
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_ZOOKEEPER_PORTS = frozenset({2181, 2182})
MAX_APP_ID_LEN = 200
SECRET_KEYS = frozenset({"sasl_password", "http_token", "schema_registry_password"})


_Invalid = InvalidValue  # raised by the value parsers below; the caller adds file/key/value


# ---- value parsers: text in, typed value out, _Invalid on failure ------------------------------


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise _Invalid("must not be empty")
    return value


def _positive_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise _Invalid("not a whole number") from None
    if value <= 0:
        raise _Invalid("must be greater than 0")
    return value


def _port(raw: str) -> int:
    value = _positive_int(raw)
    if value > 65_535:
        raise _Invalid("not a TCP port (1-65535)")
    return value


def parse_duration_s(raw: str, *, bare_unit_s: float = 60) -> float:
    """``30s``, ``10m``, ``2h``, ``7d``, ``1w``, ``250ms``; a bare number counts ``bare_unit_s``."""
    match = _DURATION_RE.match(raw)
    if not match:
        raise _Invalid("not a duration (use e.g. 30s, 10m, 2h, 7d)")
    number, unit = float(match.group(1)), match.group(2)
    seconds = number * (_DURATION_UNITS_S[unit.lower()] if unit else bare_unit_s)
    if seconds <= 0:
        raise _Invalid("must be longer than 0")
    return seconds


def _minutes_duration(raw: str) -> float:
    # The seed counted retention in Spark batches; a bare number here is minutes, so its own
    # example (10 and 10) keeps ten minutes of buckets instead of wiping them within seconds.
    return parse_duration_s(raw, bare_unit_s=60)


def _seconds_duration(raw: str) -> float:
    return parse_duration_s(raw, bare_unit_s=1)


def _brokers(raw: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not servers:
        raise _Invalid("must name at least one Kafka bootstrap server host:port")
    for server in servers:
        host, sep, port_text = server.rpartition(":")
        if "/" in server:
            raise _Invalid(
                "looks like a ZooKeeper connect string; bucket_app needs Kafka bootstrap "
                "servers (host:port of the brokers, usually port 9092)"
            )
        if not sep or not host or not port_text.isdigit():
            raise _Invalid(f"{server!r} is not host:port")
        if int(port_text) in _ZOOKEEPER_PORTS:
            raise _Invalid(
                f"port {port_text} is ZooKeeper's; bucket_app needs Kafka bootstrap servers "
                "(the brokers' host:port, usually port 9092), not ZooKeeper"
            )
    return servers


def _topic(raw: str) -> str:
    value = raw.strip()
    if not _TOPIC_RE.match(value) or value in {".", ".."}:
        raise _Invalid("not a valid Kafka topic name (letters, digits, '.', '_', '-')")
    return value


def _app_id(raw: str) -> str:
    # The changelog topic is <app_id>-<fingerprint>-counts-changelog (bucket_app.identity),
    # and Kafka's topic names stop at 249 characters.
    value = _topic(raw)
    if len(value) > MAX_APP_ID_LEN:
        raise _Invalid(f"longer than {MAX_APP_ID_LEN} characters (topic names derive from it)")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    """A parser accepting ``options`` in any case; the value comes back in their case."""
    by_folded = {option.casefold(): option for option in options}

    def parse(raw: str) -> str:
        value = by_folded.get(raw.strip().casefold())
        if value is None:
            raise _Invalid(f"must be one of {', '.join(options)}")
        return value

    return parse


def _bucket_interval(raw: str) -> int:
    value = _positive_int(raw)
    if SECONDS_PER_DAY % value:
        raise _Invalid(f"must divide the {SECONDS_PER_DAY} seconds of a day evenly")
    return value


def _host(raw: str) -> str:
    return _text(raw)


def _optional_path(raw: str) -> str | None:
    value = raw.strip()
    return None if value.lower() in {"", "none", "null"} else value


def _optional_text(raw: str) -> str | None:
    value = raw.strip()
    return None if value.lower() in {"", "none", "null"} else value


def _optional_url(raw: str) -> str | None:
    value = _optional_text(raw)
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise _Invalid("not an http:// or https:// URL")
    if parts.username or parts.password:
        raise _Invalid("must not hold credentials; use schema_registry_username and "
                       "schema_registry_password")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise _Invalid("its port is not a number") from None
    return value.rstrip("/")


def _optional_topic(raw: str) -> str | None:
    value = _optional_text(raw)
    return None if value is None else _topic(value)


def _optional_seconds(raw: str) -> float | None:
    value = raw.strip()
    if value.lower() in {"", "none", "null", "off", "0"}:
        return None
    return parse_duration_s(value, bare_unit_s=1)


#: idle_close = auto: this many bucket intervals
IDLE_CLOSE_INTERVALS = 3
_AUTO = "auto"


def _idle_close(raw: str) -> float | str | None:
    return _AUTO if raw.strip().lower() == _AUTO else _optional_seconds(raw)


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"true", "yes", "on", "1"}:
        return True
    if value in {"false", "no", "off", "0"}:
        return False
    raise _Invalid("must be true or false")


def _sqlite_db(raw: str) -> str:
    return _text(raw)


def _sqlite_table(raw: str) -> str:
    value = _text(raw)
    if "\x00" in value:
        raise _Invalid("must not contain NUL")
    return value


@dataclass(frozen=True)
class Key:
    """One settings key: where it lives, how it parses, its default (None = required)."""

    section: str
    name: str
    parse: Callable[[str], Any]
    default: str | None
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


KEYS: tuple[Key, ...] = (
    Key("KafkaSettings", "brokers", _brokers, None,
        "Kafka bootstrap servers, host:port[,host:port...]"),
    Key("KafkaSettings", "topic", _topic, None, "the topic of messages to count"),
    Key("KafkaSettings", "output_topic", _optional_topic, "none",
        "compacted topic that gets every changed snapshot row as keyed JSON; none = off"),
    Key("KafkaSettings", "avro_val_schema", _optional_path, "None",
        "path to an .avsc schema when values are Avro, or None for JSON"),
    Key("KafkaSettings", "schema_registry_url", _optional_url, "none",
        "Confluent-compatible schema registry: Avro values are read with their writer "
        "schema by id; none = off"),
    Key("KafkaSettings", "schema_registry_username", _optional_text, "none",
        "schema registry basic-auth user (Confluent Cloud: the API key)"),
    Key("KafkaSettings", "schema_registry_password", _optional_text, "none",
        "schema registry basic-auth password; prefer BUCKET_APP_SCHEMA_REGISTRY_PASSWORD"),
    Key("KafkaSettings", "schema_registry_cafile", _optional_path, "none",
        "PEM file of the CAs to trust for an https registry; none = the system's"),
    Key("KafkaSettings", "partitions", _positive_int, "6",
        "partitions for topics bucket_app creates (the source topic if missing)"),
    Key("KafkaSettings", "replication_factor", _positive_int, "1",
        "replication factor for topics bucket_app creates"),
    Key("KafkaSettings", "app_id", _app_id, "bucket_app",
        "consumer group id and prefix of the changelog topics"),
    Key("KafkaSettings", "isolation_level", _choice("read_committed", "read_uncommitted"),
        "read_committed",
        "read_committed: records of aborted transactions are never counted, an open one's "
        "wait for its end; read_uncommitted: every record as written"),
    Key("KafkaSettings", "session_timeout", _seconds_duration, "15s",
        "how long a silent worker keeps its partitions before the group moves them"),
    Key("KafkaSettings", "startup_timeout", _optional_seconds, "none",
        "give up start-up when the brokers stay unreachable this long; none = wait forever"),
    Key("KafkaSettings", "security_protocol",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), "PLAINTEXT",
        "how every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    Key("KafkaSettings", "sasl_mechanism",
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "PLAIN",
        "SASL mechanism with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    Key("KafkaSettings", "sasl_username", _optional_text, "none", "SASL user name"),
    Key("KafkaSettings", "sasl_password", _optional_text, "none",
        "SASL password; prefer the environment variable BUCKET_APP_SASL_PASSWORD"),
    Key("KafkaSettings", "ssl_cafile", _optional_path, "none",
        "PEM file of the CAs to trust with SSL/SASL_SSL; none = the system's"),
    Key("KafkaSettings", "ssl_certfile", _optional_path, "none",
        "PEM client certificate for mutual TLS"),
    Key("KafkaSettings", "ssl_keyfile", _optional_path, "none",
        "PEM private key of ssl_certfile"),
    Key("KafkaSettings", "ssl_check_hostname", _boolean, "true",
        "check that the broker's certificate names the host connected to"),
    Key("MsgSettings", "bucket_interval", _bucket_interval, None,
        "seconds per bucket; must divide 86400"),
    Key("MsgSettings", "bucket_field", _text, None,
        "message field holding the event time (dotted path for nested fields)"),
    Key("MsgSettings", "bucket_type", _choice("epoch", "iso"), None,
        "format of bucket_field: epoch (seconds) or iso (ISO-8601)"),
    Key("MsgSettings", "msg_map_schema", _text, None,
        "path to a JSON object mapping message fields to column names"),
    Key("MsgSettings", "max_future_skew", _seconds_duration, "1h",
        "events timed further ahead of the wall clock are rejected as bad input"),
    Key("MsgSettings", "grace", _optional_seconds, "none",
        "a bucket is final once every partition's event time passed its end plus this; "
        "none = one bucket_interval"),
    Key("MsgSettings", "idle_close", _idle_close, "auto",
        "a partition with nothing left to count that counted nothing this long no longer "
        "holds buckets open; auto = three bucket_interval; off = never"),
    Key("MsgSettings", "dead_letter_topic", _optional_topic, "none",
        "topic that gets every skipped message with its reason as headers; none = off"),
    Key("HTTPEndpointSetting", "sqlite_schema", _text, None,
        "path to a JSON object mapping column names to SQLite types"),
    Key("HTTPEndpointSetting", "sqlite_db", _sqlite_db, None,
        "path of the SQLite snapshot file, or :memory: for a private one"),
    Key("HTTPEndpointSetting", "sqlite_table", _sqlite_table, None,
        "table name of the counts in the snapshot"),
    Key("HTTPEndpointSetting", "clean_interval", _minutes_duration, None,
        "how long buckets are kept (event time); bare number = minutes"),
    Key("HTTPEndpointSetting", "clean_freq", _minutes_duration, None,
        "how often expired buckets are removed; bare number = minutes"),
    Key("HTTPEndpointSetting", "web_host", _host, "127.0.0.1", "address the web server binds"),
    Key("HTTPEndpointSetting", "web_port", _port, "5000",
        "port of the web server ($PORT overrides it too)"),
    Key("HTTPEndpointSetting", "snapshot_interval", _seconds_duration, "0.5s",
        "how often the SQLite snapshot is refreshed; bare number = seconds"),
    Key("HTTPEndpointSetting", "sql_time_limit", _seconds_duration, "2s",
        "time limit of one SQL query; bare number = seconds"),
    Key("HTTPEndpointSetting", "sql_row_limit", _positive_int, "10000",
        "most rows one SQL answer returns (it says truncated when there were more)"),
    Key("HTTPEndpointSetting", "data_dir", _text, "data",
        "directory of the RocksDB state and private files"),
    Key("HTTPEndpointSetting", "http_token", _optional_text, "none",
        "when set, every route but /health needs Authorization: Bearer <token>"),
    Key("HTTPEndpointSetting", "sql_client_limit", _positive_int, "2",
        "SQL queries one client (remote address) may have running at once; 429 beyond it"),
    Key("HTTPEndpointSetting", "sql_queue_limit", _positive_int, "16",
        "SQL queries admitted at once from all clients; 503 beyond it"),
)
KEYS_BY_SECTION: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    KEYS_BY_SECTION.setdefault(_key.section, {})[_key.name] = _key
KEYS_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}


@dataclass(frozen=True)
class Settings:
    """The validated settings, every path absolute, every duration in seconds."""

    source: Path
    brokers: tuple[str, ...]
    topic: str
    avro_schema_path: Path | None
    avro_schema: dict[str, Any] | None
    schema_registry_url: str | None
    schema_registry_username: str | None
    schema_registry_password: str | None = field(repr=False)
    schema_registry_cafile: Path | None
    partitions: int
    replication_factor: int
    app_id: str
    isolation_level: str
    session_timeout_s: float
    startup_timeout_s: float | None
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str | None
    sasl_password: str | None = field(repr=False)
    ssl_cafile: Path | None
    ssl_certfile: Path | None
    ssl_keyfile: Path | None
    ssl_check_hostname: bool
    bucket_interval_s: int
    bucket_field: str
    bucket_type: str
    msg_map: dict[str, str]
    max_future_skew_s: float
    grace_s: float
    idle_close_s: float | None
    dead_letter_topic: str | None
    output_topic: str | None
    sqlite_schema: dict[str, str]
    sqlite_db: str
    snapshot_path: Path
    sqlite_table: str
    clean_interval_s: float
    clean_freq_s: float
    web_host: str
    web_port: int
    snapshot_interval_s: float
    sql_time_limit_s: float
    sql_row_limit: int
    data_dir: Path
    http_token: str | None = field(repr=False)
    sql_client_limit: int
    sql_queue_limit: int
    raw: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def broker_url(self) -> str:
        return ",".join(f"kafka://{server}" for server in self.brokers)


def settings_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(SETTINGS_ENV) or "settings.ini").absolute()


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, check and resolve the settings file; raise SettingsError with one line on failure."""
    env = os.environ if environ is None else environ
    source = (path or settings_path(env)).absolute()
    raw = _read_raw(source, env)
    values: dict[str, Any] = {}
    for key in KEYS:
        text, origin = raw[key.name]
        try:
            values[key.name] = key.parse(text)
        except _Invalid as exc:
            raise SettingsError(_where(origin, key, text) + f": {exc}") from None
    if env.get("PORT"):
        try:
            values["web_port"] = _port(env["PORT"])
        except _Invalid as exc:
            raise SettingsError(f"environment: PORT = {env['PORT']!r}: {exc}") from None
    return _resolve(source, values, raw)


def _where(origin: str, key: Key, text: str) -> str:
    if key.name in SECRET_KEYS and text.strip().lower() not in {"", "none", "null"}:
        text = "***"  # an error line must not leak a secret into logs
    if origin == "env":
        return f"environment: {key.env} = {text!r}"
    return f"{origin}: [{key.section}] {key.name} = {text!r}"


def sources(path: Path | None = None,
            environ: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Each key's text and its source, ``file``, ``env`` or ``default``, in :data:`KEYS` order.

    For showing the effective settings (``bucket-app check``); raises SettingsError for a file
    :func:`load` would refuse to read. ``$PORT`` is not a key: callers show it themselves.
    """
    env = os.environ if environ is None else environ
    source = (path or settings_path(env)).absolute()
    parser = _read_file(source)
    found: dict[str, tuple[str, str]] = {}
    for name, (text, origin) in _read_raw(source, env).items():
        if origin != "env":
            key = KEYS_BY_NAME[name]
            origin = "file" if parser.has_option(key.section, key.name) else "default"
        found[name] = (text, origin)
    return found


def _read_file(source: Path) -> configparser.ConfigParser:
    """The settings file parsed, every section and key in it known."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case for errors
    try:
        with source.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise SettingsError(
            f"{source}: settings file not found (set {SETTINGS_ENV} or create settings.ini)"
        ) from None
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError(f"{source}: cannot read settings: {first_line}") from None
    for section in parser.sections():
        if section not in KEYS_BY_SECTION:
            known = ", ".join(KEYS_BY_SECTION)
            raise SettingsError(f"{source}: [{section}]: unknown section (known: {known})")
        for name in parser[section]:
            if name not in KEYS_BY_SECTION[section]:
                known = ", ".join(KEYS_BY_SECTION[section])
                raise SettingsError(
                    f"{source}: [{section}] {name} = {parser[section][name]!r}: "
                    f"unknown key (known in [{section}]: {known})"
                )
    return parser


def _read_raw(source: Path, env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Each key's text and where it came from: ``env``, or the file's path (set or default)."""
    parser = _read_file(source)
    raw: dict[str, tuple[str, str]] = {}
    for key in KEYS:
        if key.env in env:
            raw[key.name] = (env[key.env], "env")
        elif parser.has_option(key.section, key.name):
            raw[key.name] = (parser.get(key.section, key.name), str(source))
        elif key.default is not None:
            raw[key.name] = (key.default, str(source))
        else:
            raise SettingsError(f"{source}: [{key.section}] {key.name}: missing ({key.help})")
    return raw


def _resolve(source: Path, values: dict[str, Any], raw: dict[str, tuple[str, str]]) -> Settings:
    base = source.parent
    keys = {key.name: key for key in KEYS}

    def fail(name: str, why: str) -> SettingsError:
        text, origin = raw[name]
        # `why` may quote a path built from the value, and a value may hold a line break
        why = why.replace("\r", "\\r").replace("\n", "\\n")
        return SettingsError(_where(origin, keys[name], text) + f": {why}")

    def path_of(name: str) -> Path:
        try:
            return (base / os.path.expanduser(values[name])).resolve()
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a symlink loop
            raise fail(name, f"not a usable path: {_first_line(exc)}") from None

    def is_file(name: str, path: Path) -> bool:
        try:
            return path.is_file()
        except OSError as exc:  # ENAMETOOLONG, EACCES: not the "no" that is_file() returns
            raise fail(name, f"cannot check {path}: {exc.strerror or exc}") from None

    avro_path = path_of("avro_val_schema") if values["avro_val_schema"] else None
    avro_schema = None
    if avro_path is not None:
        try:
            avro_schema = load_avro_schema(str(avro_path))
        except (OSError, ValueError) as exc:
            raise fail("avro_val_schema", _first_line(exc)) from None

    msg_map = _json_object(path_of("msg_map_schema"), lambda why: fail("msg_map_schema", why))
    for field_path, column in msg_map.items():
        if not isinstance(column, str) or not column.strip():
            raise fail("msg_map_schema", f"field {field_path!r} must map to a column name string")
    columns = list(msg_map.values())
    if len(set(columns)) != len(columns):
        raise fail("msg_map_schema", "two fields map to the same column")
    reserved = {*BUCKET_COLUMNS, RST_COLUMN, LATE_COLUMN, FINAL_COLUMN}
    clash = sorted(set(columns) & reserved)
    if clash:
        raise fail("msg_map_schema", f"column {clash[0]!r} is reserved for bucket_app")
    # Field paths are checked here, not when the worker builds its classifier: there a bad
    # one ("a..b", "") was a ValueError naming neither the file nor the key.
    try:
        FieldMap(msg_map)
    except ValueError as exc:
        raise fail("msg_map_schema", str(exc)) from None
    try:
        TimeField(values["bucket_field"], values["bucket_type"])
    except ValueError as exc:
        raise fail("bucket_field", str(exc)) from None

    schema = _json_object(path_of("sqlite_schema"), lambda why: fail("sqlite_schema", why))
    for column, sql_type in schema.items():
        if not isinstance(sql_type, str) or sql_type.strip().upper() not in SQLITE_TYPES:
            allowed = ", ".join(sorted(SQLITE_TYPES))
            raise fail("sqlite_schema", f"column {column!r} has type {sql_type!r} ({allowed})")
    missing = [col for col in (*columns, *BUCKET_COLUMNS) if col not in schema]
    if missing:
        raise fail("sqlite_schema", f"lacks column {missing[0]!r} (needs the mapped columns, "
                   "bucket_start, bucket_end and count)")
    added = (RST_COLUMN, LATE_COLUMN, FINAL_COLUMN)
    extra = [col for col in schema if col not in (*columns, *BUCKET_COLUMNS, *added)]
    if extra:
        raise fail("sqlite_schema", f"column {extra[0]!r} is neither mapped in msg_map_schema "
                   "nor one of bucket_start, bucket_end, count")
    for column in added:  # added by bucket_app itself (RST_ID as in the seed)
        schema.pop(column, None)

    if values["clean_interval"] < values["bucket_interval"]:
        raise fail("clean_interval", f"must be at least bucket_interval "
                   f"({values['bucket_interval']} s), or buckets vanish as they close")

    if values["security_protocol"].startswith("SASL_"):
        for name in ("sasl_username", "sasl_password"):
            if not values[name]:
                raise fail(name, f"is needed with security_protocol = "
                           f"{values['security_protocol']}")
    tls_files: dict[str, Path | None] = {}
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        tls_files[name] = path_of(name) if values[name] else None
        found = tls_files[name]
        if found is not None and not is_file(name, found):
            raise fail(name, f"file {found} not found")
    if (tls_files["ssl_certfile"] is None) != (tls_files["ssl_keyfile"] is None):
        raise fail("ssl_certfile" if tls_files["ssl_keyfile"] else "ssl_keyfile",
                   "ssl_certfile and ssl_keyfile go together")

    registry_cafile = _registry_checks(values, path_of, is_file, fail)

    data_dir = path_of("data_dir")
    sqlite_db = values["sqlite_db"]
    snapshot = data_dir / "snapshot-memory.sqlite3" if sqlite_db == ":memory:" else path_of(
        "sqlite_db")
    try:
        is_dir = snapshot.is_dir()
    except OSError as exc:
        raise fail("sqlite_db", f"cannot check {snapshot}: {exc.strerror or exc}") from None
    if is_dir:
        raise fail("sqlite_db", f"{snapshot} is a directory; name a file or :memory:")

    return Settings(
        source=source,
        brokers=values["brokers"],
        topic=values["topic"],
        avro_schema_path=avro_path,
        avro_schema=avro_schema,
        schema_registry_url=values["schema_registry_url"],
        schema_registry_username=values["schema_registry_username"],
        schema_registry_password=values["schema_registry_password"],
        schema_registry_cafile=registry_cafile,
        partitions=values["partitions"],
        replication_factor=values["replication_factor"],
        app_id=values["app_id"],
        isolation_level=values["isolation_level"],
        session_timeout_s=values["session_timeout"],
        startup_timeout_s=values["startup_timeout"],
        security_protocol=values["security_protocol"],
        sasl_mechanism=values["sasl_mechanism"],
        sasl_username=values["sasl_username"],
        sasl_password=values["sasl_password"],
        ssl_cafile=tls_files["ssl_cafile"],
        ssl_certfile=tls_files["ssl_certfile"],
        ssl_keyfile=tls_files["ssl_keyfile"],
        ssl_check_hostname=values["ssl_check_hostname"],
        bucket_interval_s=values["bucket_interval"],
        bucket_field=values["bucket_field"],
        bucket_type=values["bucket_type"],
        msg_map={str(k): str(v) for k, v in msg_map.items()},
        max_future_skew_s=values["max_future_skew"],
        grace_s=values["bucket_interval"] if values["grace"] is None else values["grace"],
        idle_close_s=(IDLE_CLOSE_INTERVALS * values["bucket_interval"]
                      if values["idle_close"] == _AUTO else values["idle_close"]),
        dead_letter_topic=values["dead_letter_topic"],
        output_topic=values["output_topic"],
        sqlite_schema={str(k): str(v).upper() for k, v in schema.items()},
        sqlite_db=sqlite_db,
        snapshot_path=snapshot,
        sqlite_table=values["sqlite_table"],
        clean_interval_s=values["clean_interval"],
        clean_freq_s=values["clean_freq"],
        web_host=values["web_host"],
        web_port=values["web_port"],
        snapshot_interval_s=values["snapshot_interval"],
        sql_time_limit_s=values["sql_time_limit"],
        sql_row_limit=values["sql_row_limit"],
        data_dir=data_dir,
        http_token=values["http_token"],
        sql_client_limit=values["sql_client_limit"],
        sql_queue_limit=values["sql_queue_limit"],
        raw={name: text for name, (text, _) in raw.items()},
    )


def _registry_checks(values: dict[str, Any], path_of: Callable[[str], Path],
                     is_file: Callable[[str, Path], bool],
                     fail: Callable[[str, str], SettingsError]) -> Path | None:
    """The schema registry keys agree with each other; the CA file's path when one is set."""
    url = values["schema_registry_url"]
    for name in ("schema_registry_username", "schema_registry_password",
                 "schema_registry_cafile"):
        if values[name] and url is None:
            raise fail(name, "is set but schema_registry_url is none")
    user, password = values["schema_registry_username"], values["schema_registry_password"]
    if (user is None) != (password is None):
        raise fail("schema_registry_password" if user else "schema_registry_username",
                   "schema_registry_username and schema_registry_password go together")
    if not values["schema_registry_cafile"]:
        return None
    if not url.startswith("https://"):
        raise fail("schema_registry_cafile", "needs an https:// schema_registry_url")
    cafile = path_of("schema_registry_cafile")
    if not is_file("schema_registry_cafile", cafile):
        raise fail("schema_registry_cafile", f"file {cafile} not found")
    return cafile


def _json_object(path: Path, fail: Callable[[str], SettingsError]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(f"file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path}: {_first_line(exc)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise fail(f"{path} must hold a JSON object")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
