"""The counts changelog's records, decoded: a window-key's count in one source partition, or a
source partition's progress.

Faust's changelog of the ``counts`` table (written by :mod:`bucket_app.kafka.changelog`) keys
each record by JSON ``[[partition, *values], [start, end]]`` with the value ``[count, offset]``
or ``[count, offset, late]``, or a tombstone when retention removed the key; progress records
are keyed ``[PROGRESS_KEY, partition]`` (:mod:`bucket_app.counting.keys`). The reader keeps
count records raw (:class:`Pending`) and decodes only progress; the SQLite child decodes the
counts (:func:`decode_records`). Imports neither Kafka nor Faust: the child uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bucket_app.counting.keys import PROGRESS_KEY

log = logging.getLogger(__name__)

# (source partition, mapped values, bucket start) -> count in that partition
PartKey = tuple[int, tuple[Any, ...], int]


@dataclass
class Progress:
    """What the snapshot reflects of one source partition."""

    offset: int = -1
    watermark_s: float = 0.0
    seen_at_s: float = 0.0  # wall clock of the partition's last counted batch; 0: unknown


# a window-key's (count, late) in one source partition; None when retention deleted it
PartValue = tuple[int, int] | None


@dataclass
class Decoded:
    counts: dict[PartKey, PartValue] = field(default_factory=dict)
    progress: dict[int, Progress] = field(default_factory=dict)


# How a progress record's key starts (orjson's encoding of progress_key); count keys start "[[".
PROGRESS_PREFIX = orjson.dumps([PROGRESS_KEY])[:-1]


@dataclass
class Pending:
    """Changelog records read since the last refresh: the counts' latest raw key and value
    (decoded where they are applied, in the snapshot process), the progress decoded."""

    records: dict[bytes, bytes | None] = field(default_factory=dict)
    progress: dict[int, Progress] = field(default_factory=dict)

    def add(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if key.startswith(PROGRESS_PREFIX):
            decoded = Decoded()
            decode_record(key, value, decoded)
            self.progress.update(decoded.progress)
        else:
            self.records[key] = value

    def then(self, later: Pending) -> Pending:
        """These records, and ``later``'s over them (read after them)."""
        self.records.update(later.records)
        self.progress.update(later.progress)
        return self


def decode_records(records: Iterable[tuple[bytes, bytes | None]]) -> dict[PartKey, PartValue]:
    """Count records (raw changelog key and value) as per-partition counts, None = deleted."""
    decoded = Decoded()
    for key, value in records:
        decode_record(key, value, decoded)
    return decoded.counts


def decode_record(key: bytes | None, value: bytes | None, into: Decoded) -> None:
    """Fold one changelog record into ``into``; unknown shapes are ignored with a log line."""
    if key is None:
        return
    try:
        parsed = orjson.loads(key)
        if parsed[0] == PROGRESS_KEY:
            if value is not None:
                offset, watermark, *seen_at = orjson.loads(value)
                into.progress[int(parsed[1])] = Progress(
                    int(offset), float(watermark), float(seen_at[0]) if seen_at else 0.0)
            return
        (partition, *values), (start, _end) = parsed
        count: PartValue = None
        if value is not None:
            stored = orjson.loads(value)  # [count, offset] or [count, offset, late]
            count = (int(stored[0]), int(stored[2]) if len(stored) > 2 else 0)
        into.counts[(int(partition), tuple(values), int(start))] = count
    except (orjson.JSONDecodeError, TypeError, ValueError, IndexError) as exc:
        log.warning("ignored changelog record with key %r: %s", key[:200], exc)
