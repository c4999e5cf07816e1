"""The output topic in tests: the settings of a snapshot file, and the topic read back.

:func:`read_all` reads every record of a topic from the beginning with a plain consumer (no
group, nothing committed) and decodes the JSON values; :func:`latest` is what compaction keeps
of them, the last value per key with tombstones removing keys, as ClickHouse or Druid would
rebuild the table. :func:`settings_for` is the seed's settings with a snapshot file under
``tmp_path`` (loading them contacts no broker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bucket_app.settings import load
from tests.support.kafka import read_to_end
from tests.support.settings import MSG_MAP, SEED_INI, SQLITE_SCHEMA, write_config


def settings_for(tmp_path: Path, msg_map: dict[str, str] = MSG_MAP,
                 schema: dict[str, str] = SQLITE_SCHEMA) -> Any:
    ini = SEED_INI.replace("sqlite_db = :memory:", f"sqlite_db = {tmp_path}/snap.sqlite3")
    return load(write_config(tmp_path, ini, msg_map, schema), {})


async def read_all(topic: str, partitions: int = 3) -> list[tuple[bytes, Any]]:
    """Every record of ``topic`` from the beginning, as (key, decoded value or None)."""
    found = await read_to_end(topic, partitions)
    return [(r.key, None if r.value is None else orjson.loads(r.value))
            for records in found.values() for r in records]


def latest(records: list[tuple[bytes, Any]]) -> dict[bytes, Any]:
    """What compaction keeps: the last value per key, a tombstone removing the key."""
    found: dict[bytes, Any] = {}
    for key, value in records:
        if value is None:
            found.pop(key, None)
        else:
            found[key] = value
    return found
