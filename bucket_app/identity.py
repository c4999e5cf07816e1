"""State identity: which stored counts a worker may build on, and the names that follow from it.

A stored count means "messages of this topic in [bucket_start, bucket_end), under this mapping";
it keeps that meaning only while the settings that decide it stay the same. Those settings are
*bound* to the state (:data:`BOUND_KEYS`): the source topic, the bucket interval, the bucket
field and its type, the mapped fields in order (a window-key stores the mapped values by
position, so a reordered map would relabel them), and how values decode (JSON, or Avro with
the schema's parsing canonical form: the file's path, its ``doc`` strings and defaults do not
change what a message decodes to; with a schema registry and no file, the subject whose latest
version is the reader schema), and which records of the topic are read at all
(``isolation_level``: under read_uncommitted a count includes records of aborted
transactions). Anything else (ports, limits, retention, snapshot pacing,
``max_future_skew``, which only decides whether a message far ahead of the wall clock is
counted at all) is not bound.

:func:`state_id` is ``<app_id>-<fingerprint>``, the fingerprint a short hash of the bound
settings. It is the Faust app id, hence the consumer group, the prefix of the changelog topic
and the name of the local tables' directory, so a worker whose bound settings changed counts
afresh under new names and never reads or relabels counts that meant something else. The old
state is left as it was, and :func:`startup_line` says where. Every name derived from the
state is derived here, and nothing here touches Kafka or the disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fastavro.schema import to_parsing_canonical_form

from bucket_app.settings import Settings

# hex digits of sha256 kept: 40 bits, so two bound settings of one app_id do not collide
FINGERPRINT_LEN = 10
BOUND_KEYS = ("topic", "bucket_interval", "bucket_field", "bucket_type", "msg_map",
              "value_format", "isolation_level")
# Bound settings added after states had identities, with the value every earlier state counted
# under: that value is left out of the fingerprint, so those states keep their names.
IMPLIED = {"isolation_level": "read_uncommitted"}
# <data_dir>/OWNER_FILE names the state the last worker on that data_dir counted under
OWNER_FILE = "tables-owner"
# Under <data_dir>: one directory of local tables (RocksDB) per state.
TABLES_DIR = "tables"
# Where the local tables were before states had identities (Faust's default tabledir).
LEGACY_TABLEDIR = Path("v1") / "tables"
# The worker's Faust table of counts; its changelog is what the snapshot reads.
COUNTS_TABLE = "counts"


def bound(settings: Settings) -> dict[str, Any]:
    """The settings that give a stored count its meaning, as plain JSON values."""
    value_format = "json"
    if settings.avro_schema is not None:
        value_format = "avro " + to_parsing_canonical_form(settings.avro_schema)
    elif settings.schema_registry_url is not None:
        # the reader schema is the subject's latest version, whichever it is at start-up: the
        # registry's compatibility rules, not a new state, keep its versions' counts alike
        value_format = f"registry subject {settings.topic}-value"
    values = {
        "topic": settings.topic,
        "bucket_interval": settings.bucket_interval_s,
        "bucket_field": settings.bucket_field,
        "bucket_type": settings.bucket_type,
        "msg_map": [[path, column] for path, column in settings.msg_map.items()],
        "value_format": value_format,
        "isolation_level": settings.isolation_level,
    }
    return {key: value for key, value in values.items() if IMPLIED.get(key) != value}


def _canonical(values: dict[str, Any]) -> bytes:
    return json.dumps(values, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def fingerprint(settings: Settings) -> str:
    """A short, stable hash of :func:`bound`: equal exactly when the bound settings are."""
    return hashlib.sha256(_canonical(bound(settings))).hexdigest()[:FINGERPRINT_LEN]


def state_id(settings: Settings) -> str:
    """The Faust app id: consumer group id and prefix of the changelog topics."""
    return f"{settings.app_id}-{fingerprint(settings)}"


def changelog_topic_of(state: str, table: str) -> str:
    """Faust's changelog topic of ``table`` for the app id ``state``."""
    return f"{state}-{table}-changelog"


def changelog_topic(settings: Settings, table: str) -> str:
    return changelog_topic_of(state_id(settings), table)


def counts_changelog(settings: Settings) -> str:
    """Faust's changelog topic of the counts table, which every replica's snapshot reads."""
    return changelog_topic(settings, COUNTS_TABLE)


def tabledir_of(data_dir: Path, state: str) -> Path:
    """The local tables (RocksDB files) of ``state``: one directory each, since Faust names
    the files by the table alone."""
    return data_dir / TABLES_DIR / state


def tabledir(settings: Settings) -> Path:
    return tabledir_of(settings.data_dir, state_id(settings))


def running_marker(settings: Settings) -> Path:
    """Exists while a worker of this state runs on the data_dir, and after it did not stop
    cleanly."""
    return settings.data_dir / f"{state_id(settings)}.running"


def owner_record(settings: Settings) -> str:
    """What :data:`OWNER_FILE` holds for ``settings``: the state and its bound settings."""
    return json.dumps({"state": state_id(settings), "app_id": settings.app_id,
                       "bound": bound(settings)}, indent=1) + "\n"


def _shown(key: str, value: Any) -> str:
    if key == "msg_map" and isinstance(value, list):
        return json.dumps({str(p): c for p, c in value})
    if key == "value_format" and isinstance(value, str) and value.startswith("avro "):
        digest = hashlib.sha256(value.encode()).hexdigest()[:FINGERPRINT_LEN]
        return f"avro (schema {digest})"
    return json.dumps(value)


def _previous(text: str, data_dir: Path) -> tuple[str, str, dict[str, Any], Path] | None:
    """The state an owner file names, its app_id, its bound settings (as far as they are
    known) and its local tables; None when the file says nothing usable."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, dict) and isinstance(record.get("state"), str):
        state = record["state"]
        known = record.get("bound")
        known = {**IMPLIED, **known} if isinstance(known, dict) else {}
        return state, str(record.get("app_id", state)), known, tabledir_of(data_dir, state)
    # Before states had identities: "app_id = X\ntopic = Y\n", tables in Faust's default place.
    fields = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)
    if "app_id" not in fields:
        return None
    known = {"topic": fields["topic"]} if "topic" in fields else {}
    return fields["app_id"], fields["app_id"], known, data_dir / LEGACY_TABLEDIR


def startup_line(settings: Settings, owner_text: str | None, table: str) -> str:
    """The one line a worker logs at start-up: the state it counts under and, when the last
    worker on its data_dir counted under another one, what changed and where that state is."""
    state = state_id(settings)
    line = (f"counting under state {state} (changelog {changelog_topic_of(state, table)}, "
            f"local tables {tabledir(settings)}; bound to {', '.join(BOUND_KEYS)})")
    previous = _previous(owner_text, settings.data_dir) if owner_text else None
    if previous is None or previous[0] == state:
        return line
    old_state, old_app_id, old_bound, old_tables = previous
    now = {**IMPLIED, **bound(settings)}
    changed = [f"{key} {_shown(key, old_bound[key])} -> {_shown(key, now[key])}"
               for key in BOUND_KEYS if key in old_bound and old_bound[key] != now[key]]
    if old_app_id != settings.app_id:
        changed.insert(0, f"app_id {old_app_id} -> {settings.app_id}")
    if not changed:  # a state from before identities: its other settings were not recorded
        changed = ["state identities introduced (the old state was not bound to the "
                   "bucket settings)"]
    old_changelog = changelog_topic_of(old_state, table)
    brokers = settings.brokers[0]
    return (f"{line}; the last worker on {settings.data_dir} counted under state {old_state}, "
            f"changed: {'; '.join(changed)}. Its counts are left untouched in changelog topic "
            f"{old_changelog} and local tables {old_tables}; when no longer needed delete them "
            f"with kafka-topics --bootstrap-server {brokers} --delete --topic {old_changelog} "
            f"and rm -r {old_tables}")
