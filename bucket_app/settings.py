"""Settings: settings.ini (the seed's sections and keys) read and validated once at start-up.

The file is found through ``BUCKET_APP_SETTINGS`` (default ``./settings.ini``); relative paths in
it are relative to the file. Every key can be overridden by an environment variable named
``BUCKET_APP_<KEY>`` (for example ``BUCKET_APP_BROKERS``). Each key is declared once, as the
:class:`Settings` field it fills — section, name, parser, default, help in :func:`key` — and
:data:`KEYS` is read off those fields. Loading parses each key on its own
(:mod:`bucket_app.settings_values`), then runs one check per concern across keys
(:mod:`bucket_app.settings_checks`); every problem raises
:class:`~bucket_app.errors.SettingsError` with one line naming the file, the key and the value.
Nothing here connects to anything; :func:`load` returns a frozen :class:`Settings`. It sits at
the bottom of the package with :mod:`bucket_app.errors` and :mod:`bucket_app.schema`.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bucket_app import settings_values as parse
from bucket_app.errors import InvalidValue, SettingsError
from bucket_app.schema import BUCKET_COLUMNS, FINAL_COLUMN, LATE_COLUMN, RST_COLUMN
from bucket_app.settings_checks import CHECKS, SQLITE_TYPES, Resolving
from bucket_app.settings_values import SECONDS_PER_DAY, parse_duration_s

__all__ = [
    "BUCKET_COLUMNS", "FINAL_COLUMN", "KEYS", "KEYS_BY_NAME", "KEYS_BY_SECTION", "LATE_COLUMN",
    "RST_COLUMN", "SECONDS_PER_DAY", "SECRET_KEYS", "SETTINGS_ENV", "SQLITE_TYPES", "Key",
    "Settings", "load", "parse_duration_s", "settings_path", "sources",
]

SETTINGS_ENV = "BUCKET_APP_SETTINGS"
ENV_PREFIX = "BUCKET_APP_"
SECRET_KEYS = frozenset({"sasl_password", "http_token", "schema_registry_password"})
KAFKA, MSG, HTTP = "KafkaSettings", "MsgSettings", "HTTPEndpointSetting"
_KEY = "bucket_app.key"


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


def key(section: str, name: str, parser: Callable[[str], Any], default: str | None,
        help: str) -> Any:  # noqa: A002 - the column's name in docs/settings.md
    """A :class:`Settings` field filled from key ``name`` of ``[section]``; a secret's value is
    kept out of the repr."""
    return field(repr=name not in SECRET_KEYS,
                 metadata={_KEY: Key(section, name, parser, default, help)})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The validated settings, every path absolute, every duration in seconds.

    A field made by :func:`key` holds its key's parsed value, or what a check in
    :mod:`bucket_app.settings_checks` resolved it to; the others are resolved from keys.
    The fields are in the order of the keys in docs/settings.md and ``bucket-app check``.
    """

    source: Path
    brokers: tuple[str, ...] = key(
        KAFKA, "brokers", parse.brokers, None,
        "Kafka bootstrap servers, host:port[,host:port...]")
    topic: str = key(KAFKA, "topic", parse.topic, None, "the topic of messages to count")
    output_topic: str | None = key(
        KAFKA, "output_topic", parse.optional_topic, "none",
        "compacted topic that gets every changed snapshot row as keyed JSON; none = off")
    avro_schema_path: Path | None = key(
        KAFKA, "avro_val_schema", parse.optional_path, "None",
        "path to an .avsc schema when values are Avro, or None for JSON")
    avro_schema: dict[str, Any] | None
    schema_registry_url: str | None = key(
        KAFKA, "schema_registry_url", parse.optional_url, "none",
        "Confluent-compatible schema registry: Avro values are read with their writer "
        "schema by id; none = off")
    schema_registry_username: str | None = key(
        KAFKA, "schema_registry_username", parse.optional_text, "none",
        "schema registry basic-auth user (Confluent Cloud: the API key)")
    schema_registry_password: str | None = key(
        KAFKA, "schema_registry_password", parse.optional_text, "none",
        "schema registry basic-auth password; prefer BUCKET_APP_SCHEMA_REGISTRY_PASSWORD")
    schema_registry_cafile: Path | None = key(
        KAFKA, "schema_registry_cafile", parse.optional_path, "none",
        "PEM file of the CAs to trust for an https registry; none = the system's")
    partitions: int = key(
        KAFKA, "partitions", parse.positive_int, "6",
        "partitions for topics bucket_app creates (the source topic if missing)")
    replication_factor: int = key(
        KAFKA, "replication_factor", parse.positive_int, "1",
        "replication factor for topics bucket_app creates")
    app_id: str = key(KAFKA, "app_id", parse.app_id, "bucket_app",
                      "consumer group id and prefix of the changelog topics")
    isolation_level: str = key(
        KAFKA, "isolation_level", parse.choice("read_committed", "read_uncommitted"),
        "read_committed",
        "read_committed: records of aborted transactions are never counted, an open one's "
        "wait for its end; read_uncommitted: every record as written")
    session_timeout_s: float = key(
        KAFKA, "session_timeout", parse.seconds, "15s",
        "how long a silent worker keeps its partitions before the group moves them")
    startup_timeout_s: float | None = key(
        KAFKA, "startup_timeout", parse.optional_seconds, "none",
        "give up start-up when the brokers stay unreachable this long; none = wait forever")
    security_protocol: str = key(
        KAFKA, "security_protocol", parse.choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "PLAINTEXT",
        "how every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = key(
        KAFKA, "sasl_mechanism", parse.choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        "PLAIN", "SASL mechanism with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = key(KAFKA, "sasl_username", parse.optional_text, "none",
                                    "SASL user name")
    sasl_password: str | None = key(
        KAFKA, "sasl_password", parse.optional_text, "none",
        "SASL password; prefer the environment variable BUCKET_APP_SASL_PASSWORD")
    ssl_cafile: Path | None = key(
        KAFKA, "ssl_cafile", parse.optional_path, "none",
        "PEM file of the CAs to trust with SSL/SASL_SSL; none = the system's")
    ssl_certfile: Path | None = key(KAFKA, "ssl_certfile", parse.optional_path, "none",
                                    "PEM client certificate for mutual TLS")
    ssl_keyfile: Path | None = key(KAFKA, "ssl_keyfile", parse.optional_path, "none",
                                   "PEM private key of ssl_certfile")
    ssl_check_hostname: bool = key(
        KAFKA, "ssl_check_hostname", parse.boolean, "true",
        "check that the broker's certificate names the host connected to")
    bucket_interval_s: int = key(MSG, "bucket_interval", parse.bucket_interval, None,
                                 "seconds per bucket; must divide 86400")
    bucket_field: str = key(
        MSG, "bucket_field", parse.text, None,
        "message field holding the event time (dotted path for nested fields)")
    bucket_type: str = key(MSG, "bucket_type", parse.choice("epoch", "iso"), None,
                           "format of bucket_field: epoch (seconds) or iso (ISO-8601)")
    msg_map: dict[str, str] = key(
        MSG, "msg_map_schema", parse.text, None,
        "path to a JSON object mapping message fields to column names")
    max_future_skew_s: float = key(
        MSG, "max_future_skew", parse.seconds, "1h",
        "events timed further ahead of the wall clock are rejected as bad input")
    grace_s: float = key(
        MSG, "grace", parse.optional_seconds, "none",
        "a bucket is final once every partition's event time passed its end plus this; "
        "none = one bucket_interval")
    idle_close_s: float | None = key(
        MSG, "idle_close", parse.idle_close, "auto",
        "a partition with nothing left to count that counted nothing this long no longer "
        "holds buckets open; auto = three bucket_interval; off = never")
    dead_letter_topic: str | None = key(
        MSG, "dead_letter_topic", parse.optional_topic, "none",
        "topic that gets every skipped message with its reason as headers; none = off")
    sqlite_schema: dict[str, str] = key(
        HTTP, "sqlite_schema", parse.text, None,
        "path to a JSON object mapping column names to SQLite types")
    sqlite_db: str = key(HTTP, "sqlite_db", parse.sqlite_db, None,
                         "path of the SQLite snapshot file, or :memory: for a private one")
    snapshot_path: Path
    sqlite_table: str = key(HTTP, "sqlite_table", parse.sqlite_table, None,
                            "table name of the counts in the snapshot")
    clean_interval_s: float = key(
        HTTP, "clean_interval", parse.minutes, None,
        "how long buckets are kept (event time); bare number = minutes")
    clean_freq_s: float = key(HTTP, "clean_freq", parse.minutes, None,
                              "how often expired buckets are removed; bare number = minutes")
    web_host: str = key(HTTP, "web_host", parse.host, "127.0.0.1",
                        "address the web server binds")
    web_port: int = key(HTTP, "web_port", parse.port, "5000",
                        "port of the web server ($PORT overrides it too)")
    snapshot_interval_s: float = key(
        HTTP, "snapshot_interval", parse.seconds, "0.5s",
        "how often the SQLite snapshot is refreshed; bare number = seconds")
    sql_time_limit_s: float = key(HTTP, "sql_time_limit", parse.seconds, "2s",
                                  "time limit of one SQL query; bare number = seconds")
    sql_row_limit: int = key(
        HTTP, "sql_row_limit", parse.positive_int, "10000",
        "most rows one SQL answer returns (it says truncated when there were more)")
    data_dir: Path = key(HTTP, "data_dir", parse.text, "data",
                         "directory of the RocksDB state and private files")
    http_token: str | None = key(
        HTTP, "http_token", parse.optional_text, "none",
        "when set, every route but /health needs Authorization: Bearer <token>")
    sql_client_limit: int = key(
        HTTP, "sql_client_limit", parse.positive_int, "2",
        "SQL queries one client (remote address) may have running at once; 429 beyond it")
    sql_queue_limit: int = key(HTTP, "sql_queue_limit", parse.positive_int, "16",
                               "SQL queries admitted at once from all clients; 503 beyond it")
    raw: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def broker_url(self) -> str:
        return ",".join(f"kafka://{server}" for server in self.brokers)


# key name -> the Settings field it fills, in declaration order
_FIELD_OF: dict[str, str] = {f.metadata[_KEY].name: f.name for f in dataclasses.fields(Settings)
                             if _KEY in f.metadata}
KEYS: tuple[Key, ...] = tuple(f.metadata[_KEY] for f in dataclasses.fields(Settings)
                              if _KEY in f.metadata)
KEYS_BY_SECTION: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    KEYS_BY_SECTION.setdefault(_key.section, {})[_key.name] = _key
KEYS_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}


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
        except InvalidValue as exc:
            raise SettingsError(_where(origin, key, text) + f": {exc}") from None
    if env.get("PORT"):
        try:
            values["web_port"] = parse.port(env["PORT"])
        except InvalidValue as exc:
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
    """Each key's value into its field, then :data:`~bucket_app.settings_checks.CHECKS` in
    order, each resolving the fields of its concern."""

    def fail(name: str, why: str) -> SettingsError:
        text, origin = raw[name]
        # `why` may quote a path built from the value, and a value may hold a line break
        why = why.replace("\r", "\\r").replace("\n", "\\n")
        return SettingsError(_where(origin, KEYS_BY_NAME[name], text) + f": {why}")

    out: dict[str, Any] = {_FIELD_OF[name]: value for name, value in values.items()}
    resolving = Resolving(source.parent, values, out, fail)
    for check in CHECKS:
        check(resolving)
    return Settings(source=source, raw={name: text for name, (text, _) in raw.items()}, **out)
