"""What the schema-registry worker tests share: the worker's field map and table, records.

:data:`MSG_MAP` and :data:`SQLITE_SCHEMA` are the settings of a worker counting the evolving
Avro topic (``service_name``, ``note``); :func:`events` draws records of the four schema
versions with their counts as the reader (v4) sees them; :func:`mixed` adds records no reader
can count (an unresolvable writer, an unknown id), shuffled; :func:`counted` reads a worker's
counts back from ``/a/default``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import NamedTuple

from tests.support.evolution import INCOMPATIBLE, NOTE_DEFAULT, V4, VERSIONS, record_of
from tests.support.kafka import Record
from tests.support.registry import avro_frame, register
from tests.support.worker import Worker

PARTITIONS = 3
INTERVAL = 20
MSG_MAP = {"service_name": "service", "note": "note"}
SQLITE_SCHEMA = {"service": "TEXT", "note": "TEXT", "bucket_start": "INTEGER",
                 "bucket_end": "INTEGER", "count": "INTEGER"}


def events(ids: list[int], n: int, seed: int, versions: tuple[int, ...] = (0, 1, 2, 3),
           ) -> tuple[list[Record], Counter[tuple[str, str, int]]]:
    """``n`` records of the given versions, interleaved at random over the partitions, and
    their counts by (service, note, bucket start), as the reader (v4) sees them."""
    rng = random.Random(seed)
    base = (int(time.time()) - 7200) // INTERVAL * INTERVAL
    records, expected = [], Counter[tuple[str, str, int]]()
    for _ in range(n):
        version = rng.choice(versions)
        service, ts = f"svc-{rng.randrange(4)}", base + rng.randrange(600)
        note = f"note-{rng.randrange(2)}"
        record = record_of(version, service, ts, note)
        if version == 0:
            note = NOTE_DEFAULT  # v1 has no note: the reader's default
        records.append(Record(avro_frame(ids[version], VERSIONS[version], record),
                              rng.randrange(PARTITIONS)))
        expected[(service, note, ts - ts % INTERVAL)] += 1
    return records, expected


class Mixed(NamedTuple):
    """Records of every version and records no reader can count, shuffled."""

    records: list[Record]
    expected: Counter[tuple[str, str, int]]  # of the versions' records, as the reader sees them
    bad: list[Record]  # of a writer schema no reader resolves
    bad_id: int
    unknown: list[Record]  # of an id the registry does not know
    unknown_id: int


def mixed(topic: str, n: int, seed: int) -> Mixed:
    """``n`` records of the four versions (registered under the topic's subject), 30 of a
    writer no reader resolves and 20 of an id the registry does not know, shuffled."""
    ids = [register(f"{topic}-value", version) for version in VERSIONS]
    good, expected = events(ids, n, seed=seed)
    rng = random.Random(seed + 1)
    # registered elsewhere (another subject), so the registry knows it: it just won't resolve
    bad_id = register(f"{topic}-other-value", INCOMPATIBLE)
    unknown_id = max(*ids, bad_id) + 100_000
    bad = [Record(avro_frame(bad_id, INCOMPATIBLE, {"service_name": {"id": "x"}, "ts": 1}),
                  rng.randrange(PARTITIONS)) for _ in range(30)]
    unknown = [Record(avro_frame(unknown_id, V4, {"service_name": "y", "ts": 1, "note": "z"}),
                      rng.randrange(PARTITIONS)) for _ in range(20)]
    records = good + bad + unknown
    rng.shuffle(records)
    return Mixed(records, expected, bad, bad_id, unknown, unknown_id)


def counted(worker: Worker) -> dict[tuple[str, str, int], int]:
    found: dict[tuple[str, str, int], int] = {}
    for row in worker.get("/a/default").json():
        key = (row["service"], row["note"], row["bucket_start"])
        assert key not in found, f"duplicate row {key}"
        found[key] = row["count"]
    return found
