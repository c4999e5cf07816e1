"""SnapshotStore against an independent model: per-partition counts summed into SQLite rows."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from bucket_app.counting.keys import progress_key
from bucket_app.settings import load
from bucket_app.snapshot.process import SnapshotError, SnapshotProcess
from bucket_app.snapshot.reader import (
    PartKey,
    Pending,
    Progress,
    SnapshotStore,
    decode_records,
    store_config,
)
from tests.unit.test_settings import SEED_INI, write_config

SERVERS = ["s-1", "s-2", "ünï", None, 'q"uote']
TOPICS = ["orders", "pay", "7"]


@pytest.fixture(params=["in-process", "child-process"])
def store(tmp_path: Path, request: pytest.FixtureRequest):
    """The store, and the worker's child process running it: both answer every test."""
    ini = SEED_INI.replace("sqlite_db = :memory:", f"sqlite_db = {tmp_path}/snap.sqlite3")
    config = store_config(load(write_config(tmp_path, ini), {}))
    store = SnapshotStore(**config) if request.param == "in-process" else SnapshotProcess(config)
    store.create()
    yield store
    store.close()


def records(changes: dict[PartKey, Any]) -> dict[bytes, bytes | None]:
    """Per-partition counts (an int, or (count, late)) as the raw changelog records the worker
    writes (Faust's windowed key layout, value [count, highest offset] or [count, highest
    offset, late])."""
    return {orjson.dumps([[partition, *values], [float(start), start + 19.9]]):
            None if n is None else orjson.dumps(
                [n, 1234] if isinstance(n, int) else [n[0], 1234, n[1]])
            for (partition, values, start), n in changes.items()}


def snapshot_rows(store: SnapshotStore) -> dict[tuple[Any, ...], tuple[int, ...]]:
    """(server, topic, start, end) -> (count, late, final, RST_ID), read by a separate
    connection."""
    with sqlite3.connect(f"file:{store.path}?mode=ro", uri=True) as conn:
        rows = conn.execute('SELECT server_name, topic, bucket_start, bucket_end, count, late, '
                            'final, RST_ID FROM "default"').fetchall()
    answer = {tuple(row[:4]): tuple(row[4:]) for row in rows}
    assert len(answer) == len(rows), "one row per group and bucket"
    return answer


def test_rows_sum_partitions_exactly_through_random_refreshes(store: SnapshotStore) -> None:
    """Counts and late counts sum over partitions; a row is final once the closing time passed
    its end plus the grace (one 20 s bucket), and stays final; RST_ID is the last refresh that
    changed the row, its final flag included."""
    rng = random.Random(4)
    parts: dict[PartKey, tuple[int, int]] = {}  # the model: what each partition holds now
    last_change: dict[tuple[Any, ...], int] = {}
    generation = 0
    closing = float("-inf")
    for _ in range(60):
        changes: dict[PartKey, tuple[int, int] | None] = {}
        for _ in range(rng.choice([0, 1, 5, 40, 200])):
            key = (rng.randrange(4), (rng.choice(SERVERS), rng.choice(TOPICS)),
                   rng.randrange(5) * 20)
            n = rng.choice([0, 0, rng.randrange(1, 50), rng.randrange(1, 5000)])
            changes[key] = (n, rng.randrange(0, n + 1)) if n else None
        # the closing time mostly moves on, sometimes back (a stale refresh): never applied back
        offered = rng.choice([closing, closing + rng.randrange(0, 30), rng.randrange(0, 140)])
        before = _expected(parts, closing)
        for key, new in changes.items():
            if new:
                parts[key] = new
            else:
                parts.pop(key, None)
        closing = max(closing, offered)
        after = _expected(parts, closing)
        changed = {row for row in before.keys() | after.keys() if before.get(row) != after.get(row)}
        applied = store.apply_records(records(changes), offered)
        if changed:
            generation += 1
            for row in changed:
                last_change[row] = generation
        assert applied == generation == store.generation
        assert snapshot_rows(store) == {row: (*values, last_change[row])
                                        for row, values in after.items()}


def _expected(parts: dict[PartKey, tuple[int, int]], closing: float,
              ) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    """Row -> (count, late, final)."""
    rows: dict[tuple[Any, ...], tuple[int, int, int]] = {}
    for (_, (server, topic), start), (n, late) in parts.items():
        row = (server, topic, start, start + 20)
        count, late_sum, _ = rows.get(row, (0, 0, 0))
        rows[row] = (count + n, late_sum + late, int(start + 20 + 20 <= closing))
    return rows


def test_create_starts_from_nothing(store: SnapshotStore) -> None:
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3, (1, ("s-1", "orders"), 0): 4}))
    assert snapshot_rows(store) == {("s-1", "orders", 0, 20): (7, 0, 0, 1)}
    store.create()
    assert snapshot_rows(store) == {}
    store.apply_records(records({(1, ("s-1", "orders"), 0): 2}))
    assert snapshot_rows(store) == {("s-1", "orders", 0, 20): (2, 0, 0, 1)}


def test_a_refresh_that_changes_no_row_keeps_the_generation(store: SnapshotStore) -> None:
    assert store.apply_records(records({(0, ("s-1", "orders"), 0): 3})) == 1
    assert store.apply_records(records({(0, ("s-1", "orders"), 0): 3})) == 1
    assert store.apply_records(records({(2, ("s-9", "orders"), 0): None})) == 1
    assert store.apply_records(records({})) == 1
    assert snapshot_rows(store) == {("s-1", "orders", 0, 20): (3, 0, 0, 1)}


def test_the_side_file_is_not_in_the_snapshot(store: SnapshotStore) -> None:
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3}))
    with sqlite3.connect(f"file:{store.path}?mode=ro", uri=True) as conn:
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert tables == {"default"}
    assert Path(f"{store.path}-parts").exists()


def test_a_mapped_integer_beyond_64_bits_is_kept_as_text(store: SnapshotStore) -> None:
    huge = 2**64 - 1  # valid JSON; SQLite's INTEGER stops at 2**63 - 1
    assert store.apply_records(records({(0, (huge, "orders"), 0): 3,
                                        (1, ("s-1", "orders"), 0): 2})) == 1
    assert snapshot_rows(store) == {(str(huge), "orders", 0, 20): (3, 0, 0, 1),
                                    ("s-1", "orders", 0, 20): (2, 0, 0, 1)}


def test_changelog_records_are_split_into_progress_and_counts(
        caplog: pytest.LogCaptureFixture) -> None:
    pending = Pending()
    count_key = orjson.dumps([[1, "s-1", "orders"], [60.0, 79.9]])
    pending.add(orjson.dumps(progress_key(1)), orjson.dumps([41, 1700000000.5]))
    pending.add(count_key, orjson.dumps([3, 40]))
    pending.add(orjson.dumps(progress_key(1)), orjson.dumps([57, 1700000001.0]))
    pending.add(orjson.dumps(progress_key(2)), b"[oops")
    pending.add(None, b"[1, 2]")
    assert pending.progress == {1: Progress(57, 1700000001.0)}
    assert pending.records == {count_key: orjson.dumps([3, 40])}
    assert "ignored changelog record" in caplog.text

    # The snapshot process's side: per-partition counts, the last record of a key winning,
    # a tombstone as None; unknown shapes skipped with a log line.
    caplog.clear()
    assert decode_records([
        (orjson.dumps([[1, "s-1", "orders"], [60.0, 79.9]]), orjson.dumps([3, 40])),
        (orjson.dumps([[0, "s-1", "orders"], [60, 79.9]]), None),
        (orjson.dumps([[1, "s-1", "orders"], [60, 79.9]]), orjson.dumps([5, 44])),
        (b'"not a window key"', b"[1]"),
    ]) == {(1, ("s-1", "orders"), 60): (5, 0), (0, ("s-1", "orders"), 60): None}
    assert "ignored changelog record with key b'\"not a window key\"'" in caplog.text


def test_the_childs_errors_reach_the_worker_and_it_goes_on(tmp_path: Path) -> None:
    ini = SEED_INI.replace("sqlite_db = :memory:", f"sqlite_db = {tmp_path}/snap.sqlite3")
    store = SnapshotProcess(store_config(load(write_config(tmp_path, ini), {})))
    try:
        store.create()
        with pytest.raises(SnapshotError, match="unpack"):
            store._call(b"A\x00\x00\x00\x05")  # a record cut short
        assert store.apply_records(records({(0, ("s-1", "orders"), 0): 3})) == 1
        assert snapshot_rows(store) == {("s-1", "orders", 0, 20): (3, 0, 0, 1)}
    finally:
        store.close()


def test_a_killed_child_is_an_error_and_closing_its_stdin_ends_one(tmp_path: Path) -> None:
    ini = SEED_INI.replace("sqlite_db = :memory:", f"sqlite_db = {tmp_path}/snap.sqlite3")
    store = SnapshotProcess(store_config(load(write_config(tmp_path, ini), {})))
    try:
        store.create()
        proc = store.child.proc
        assert proc is not None
        proc.kill()
        proc.wait()
        with pytest.raises(SnapshotError, match="ended"):
            store.apply_records(records({(0, ("s-1", "orders"), 0): 3}))
        store.create()  # a new child
        replacement = store.child.proc
        assert replacement is not None and replacement.pid != proc.pid
        assert replacement.stdin is not None
        replacement.stdin.close()
        assert replacement.wait(timeout=10) == 0
    finally:
        store.close()
