"""One Avro record schema in four compatible versions, and one no reader can resolve: the
schema evolution the registry tests, the unit tests of decoding and the benchmark share.

v1 ``(service, region?, ts: int)``; v2 adds ``note`` with a default; v3 drops the optional
``region`` and promotes ``ts`` to long; v4 renames ``service`` to ``service_name``, keeping the
old name as an alias. Read with v4, every version gives ``(service_name, ts, note)``; v1's
``note`` is the default, ``"none"``. INCOMPATIBLE turns the mapped field into a record.
"""

from __future__ import annotations

from typing import Any

NOTE_DEFAULT = "none"
V1: dict[str, Any] = {"type": "record", "name": "Event", "fields": [
    {"name": "service", "type": "string"},
    {"name": "region", "type": ["null", "string"], "default": None},
    {"name": "ts", "type": "int"}]}
V2: dict[str, Any] = {**V1, "fields": [
    *V1["fields"], {"name": "note", "type": "string", "default": NOTE_DEFAULT}]}
V3: dict[str, Any] = {**V1, "fields": [
    {"name": "service", "type": "string"},
    {"name": "ts", "type": "long"},
    {"name": "note", "type": "string", "default": NOTE_DEFAULT}]}
V4: dict[str, Any] = {**V1, "fields": [
    {"name": "service_name", "type": "string", "aliases": ["service"]},
    {"name": "ts", "type": "long"},
    {"name": "note", "type": "string", "default": NOTE_DEFAULT}]}
VERSIONS = (V1, V2, V3, V4)
INCOMPATIBLE: dict[str, Any] = {**V1, "fields": [
    {"name": "service_name", "type": {"type": "record", "name": "Svc",
                                      "fields": [{"name": "id", "type": "string"}]}},
    {"name": "ts", "type": "long"}]}


def record_of(version: int, service: str, ts: int, note: str) -> dict[str, Any]:
    """A record of ``VERSIONS[version]`` (0-based) with these values (v1 has no note)."""
    if version == 0:
        return {"service": service, "region": None, "ts": ts}
    if version == 1:
        return {"service": service, "region": "eu", "ts": ts, "note": note}
    if version == 2:
        return {"service": service, "ts": ts, "note": note}
    return {"service_name": service, "ts": ts, "note": note}
