"""Settings checks: one function per concern that spans keys or reads a file, run in order.

:func:`bucket_app.settings.load` parses each key on its own (:mod:`bucket_app.settings_values`),
then runs :data:`CHECKS` over a :class:`Resolving`: each check reads the parsed values, may
read the files they name, and writes the :class:`~bucket_app.settings.Settings` fields it
resolves (absolute paths, the loaded mapping and schemas, derived durations). A check fails
with ``resolving.fail(key, why)``, which names the file, the key and the value in one line;
the order of :data:`CHECKS` is the order in which problems are reported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bucket_app.errors import SettingsError
from bucket_app.schema import (
    ADDED_COLUMNS,
    BUCKET_COLUMNS,
    RESERVED_COLUMNS,
    load_avro_schema,
    split_path,
)
from bucket_app.settings_values import AUTO, IDLE_CLOSE_INTERVALS

SQLITE_TYPES = frozenset({"TEXT", "INTEGER", "INT", "REAL", "NUMERIC", "BLOB", "BIGINT", "FLOAT"})


@dataclass
class Resolving:
    """One load in progress: the parsed values by key, the Settings fields resolved so far."""

    base: Path  # the settings file's directory: relative paths are relative to it
    values: dict[str, Any]
    out: dict[str, Any]
    fail: Callable[[str, str], SettingsError]

    def path_of(self, name: str) -> Path:
        try:
            return (self.base / os.path.expanduser(self.values[name])).resolve()
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a symlink loop
            raise self.fail(name, f"not a usable path: {first_line(exc)}") from None

    def is_file(self, name: str, path: Path) -> bool:
        try:
            return path.is_file()
        except OSError as exc:  # ENAMETOOLONG, EACCES: not the "no" that is_file() returns
            raise self.fail(name, f"cannot check {path}: {exc.strerror or exc}") from None

    def json_object(self, name: str) -> dict[str, Any]:
        """The JSON object in the file key ``name`` names."""
        path = self.path_of(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self.fail(name, f"file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(name, f"cannot read {path}: {first_line(exc)}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self.fail(name, f"{path} is not valid JSON: {exc.msg} at line "
                            f"{exc.lineno}") from None
        if not isinstance(data, dict):
            raise self.fail(name, f"{path} must hold a JSON object")
        return data


def avro_schema(r: Resolving) -> None:
    """``avro_val_schema``: the file, parsed and refused if unsafe (:mod:`bucket_app.schema`)."""
    path = r.path_of("avro_val_schema") if r.values["avro_val_schema"] else None
    schema = None
    if path is not None:
        try:
            schema = load_avro_schema(str(path))
        except (OSError, ValueError) as exc:
            raise r.fail("avro_val_schema", first_line(exc)) from None
    r.out["avro_schema_path"], r.out["avro_schema"] = path, schema


def msg_map(r: Resolving) -> None:
    """``msg_map_schema``: field paths to distinct, unreserved column names."""
    mapping = r.json_object("msg_map_schema")
    for field_path, column in mapping.items():
        if not isinstance(column, str) or not column.strip():
            raise r.fail("msg_map_schema", f"field {field_path!r} must map to a column name "
                         "string")
    columns = list(mapping.values())
    if len(set(columns)) != len(columns):
        raise r.fail("msg_map_schema", "two fields map to the same column")
    clash = sorted(set(columns) & RESERVED_COLUMNS)
    if clash:
        raise r.fail("msg_map_schema", f"column {clash[0]!r} is reserved for bucket_app")
    # Field paths are checked here, not when the worker builds its classifier: there a bad
    # one ("a..b", "") was a ValueError naming neither the file nor the key.
    try:
        for field_path in mapping:
            split_path(field_path)
    except ValueError as exc:
        raise r.fail("msg_map_schema", str(exc)) from None
    r.out["msg_map"] = {str(k): str(v) for k, v in mapping.items()}


def bucket_field(r: Resolving) -> None:
    """``bucket_field``: a field path (its type is ``bucket_type``'s own choice)."""
    try:
        split_path(r.values["bucket_field"])
    except ValueError as exc:
        raise r.fail("bucket_field", str(exc)) from None


def sqlite_schema(r: Resolving) -> None:
    """``sqlite_schema``: a known type for each mapped column and the bucket columns, nothing
    else; the columns bucket_app adds itself are dropped if declared."""
    schema = r.json_object("sqlite_schema")
    for column, sql_type in schema.items():
        if not isinstance(sql_type, str) or sql_type.strip().upper() not in SQLITE_TYPES:
            allowed = ", ".join(sorted(SQLITE_TYPES))
            raise r.fail("sqlite_schema", f"column {column!r} has type {sql_type!r} ({allowed})")
    columns = list(r.out["msg_map"].values())
    missing = [col for col in (*columns, *BUCKET_COLUMNS) if col not in schema]
    if missing:
        raise r.fail("sqlite_schema", f"lacks column {missing[0]!r} (needs the mapped columns, "
                     "bucket_start, bucket_end and count)")
    extra = [col for col in schema if col not in (*columns, *BUCKET_COLUMNS, *ADDED_COLUMNS)]
    if extra:
        raise r.fail("sqlite_schema", f"column {extra[0]!r} is neither mapped in msg_map_schema "
                     "nor one of bucket_start, bucket_end, count")
    for column in ADDED_COLUMNS:  # added by bucket_app itself (RST_ID as in the seed)
        schema.pop(column, None)
    r.out["sqlite_schema"] = {str(k): str(v).upper() for k, v in schema.items()}


def retention(r: Resolving) -> None:
    """``clean_interval`` keeps at least one bucket."""
    if r.values["clean_interval"] < r.values["bucket_interval"]:
        raise r.fail("clean_interval", f"must be at least bucket_interval "
                     f"({r.values['bucket_interval']} s), or buckets vanish as they close")


def sasl(r: Resolving) -> None:
    """A SASL protocol needs a user and a password."""
    protocol = r.values["security_protocol"]
    if protocol.startswith("SASL_"):
        for name in ("sasl_username", "sasl_password"):
            if not r.values[name]:
                raise r.fail(name, f"is needed with security_protocol = {protocol}")


def tls_files(r: Resolving) -> None:
    """The TLS files exist; a client certificate comes with its key."""
    found: dict[str, Path | None] = {}
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        found[name] = r.path_of(name) if r.values[name] else None
        path = found[name]
        if path is not None and not r.is_file(name, path):
            raise r.fail(name, f"file {path} not found")
    if (found["ssl_certfile"] is None) != (found["ssl_keyfile"] is None):
        raise r.fail("ssl_certfile" if found["ssl_keyfile"] else "ssl_keyfile",
                     "ssl_certfile and ssl_keyfile go together")
    r.out.update(found)


def schema_registry(r: Resolving) -> None:
    """The schema registry keys agree with each other; its CA file exists."""
    values, url = r.values, r.values["schema_registry_url"]
    for name in ("schema_registry_username", "schema_registry_password",
                 "schema_registry_cafile"):
        if values[name] and url is None:
            raise r.fail(name, "is set but schema_registry_url is none")
    user, password = values["schema_registry_username"], values["schema_registry_password"]
    if (user is None) != (password is None):
        raise r.fail("schema_registry_password" if user else "schema_registry_username",
                     "schema_registry_username and schema_registry_password go together")
    cafile = None
    if values["schema_registry_cafile"]:
        if not url.startswith("https://"):
            raise r.fail("schema_registry_cafile", "needs an https:// schema_registry_url")
        cafile = r.path_of("schema_registry_cafile")
        if not r.is_file("schema_registry_cafile", cafile):
            raise r.fail("schema_registry_cafile", f"file {cafile} not found")
    r.out["schema_registry_cafile"] = cafile


def storage(r: Resolving) -> None:
    """``data_dir``, and the snapshot file: ``sqlite_db``, or one under data_dir for
    ``:memory:``; never a directory."""
    data_dir = r.path_of("data_dir")
    snapshot = (data_dir / "snapshot-memory.sqlite3" if r.values["sqlite_db"] == ":memory:"
                else r.path_of("sqlite_db"))
    try:
        is_dir = snapshot.is_dir()
    except OSError as exc:
        raise r.fail("sqlite_db", f"cannot check {snapshot}: {exc.strerror or exc}") from None
    if is_dir:
        raise r.fail("sqlite_db", f"{snapshot} is a directory; name a file or :memory:")
    r.out["data_dir"], r.out["snapshot_path"] = data_dir, snapshot


def lifecycle(r: Resolving) -> None:
    """``grace`` and ``idle_close`` in seconds, their defaults in bucket intervals."""
    interval = r.values["bucket_interval"]
    grace, idle = r.values["grace"], r.values["idle_close"]
    r.out["grace_s"] = interval if grace is None else grace
    r.out["idle_close_s"] = IDLE_CLOSE_INTERVALS * interval if idle == AUTO else idle


CHECKS: tuple[Callable[[Resolving], None], ...] = (
    avro_schema, msg_map, bucket_field, sqlite_schema, retention, sasl, tls_files,
    schema_registry, storage, lifecycle)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
