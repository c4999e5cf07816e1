"""SnapshotStore against an independent model: per-partition counts summed into SQLite rows."""

from __future__ import annotations

import contextlib
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bucket_app.counting.keys import progress_key
from bucket_app.settings import load
from bucket_app.snapshot import store as snapshot_store
from bucket_app.snapshot.checkpoint import Checkpoint
from bucket_app.snapshot.codec import PartKey, Pending, Progress, decode_records
from bucket_app.snapshot.process import SnapshotError, SnapshotProcess
from bucket_app.snapshot.state import ReaderState
from bucket_app.snapshot.store import SnapshotStore, store_config
from tests.support.settings import SEED_INI, replace_line, write_config

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


def test_create_starts_from_nothing_but_never_reuses_a_generation(store: SnapshotStore) -> None:
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3, (1, ("s-1", "orders"), 0): 4}))
    assert snapshot_rows(store) == {("s-1", "orders", 0, 20): (7, 0, 0, 1)}
    store.create()
    assert snapshot_rows(store) == {}
    store.apply_records(records({(1, ("s-1", "orders"), 0): 2}))
    assert snapshot_rows(store) == {("s-1", "orders", 0, 20): (2, 0, 0, 2)}


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


# Kafka's clients, Faust and its runtime, and the web server: none of them is the child's.
NOT_IN_THE_CHILD = {"aiokafka", "kafka", "faust", "mode", "aiohttp"}


def test_the_snapshot_child_imports_neither_kafka_nor_faust(tmp_path: Path) -> None:
    ini = SEED_INI.replace("sqlite_db = :memory:", f"sqlite_db = {tmp_path}/snap.sqlite3")
    store = SnapshotProcess(store_config(load(write_config(tmp_path, ini), {})))
    try:
        store.open({0: (0, 10), 1: (0, 10)})
        progress = {0: Progress(4, 20.0)}
        store.apply_records(records({(0, ("s-1", "orders"), 0): 3,
                                     (1, ("s-2", "pay"), 20): None}), 40.0, {0: 5}, progress)
        modules = store.modules()
    finally:
        store.close()
    assert store.rows == 1, "the child did not apply the refresh"
    assert {"bucket_app.snapshot.store", "bucket_app.snapshot.codec", "sqlite3"} <= set(modules)
    imported = sorted(m for m in modules if m.partition(".")[0] in NOT_IN_THE_CHILD)
    assert imported == []


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


# -- resuming the files after a restart ------------------------------------------------------

def config_of(tmp_path: Path, ini: str = SEED_INI, **changes: str) -> dict[str, Any]:
    ini = ini.replace("sqlite_db = :memory:", f"sqlite_db = {tmp_path}/snap.sqlite3")
    for key, value in changes.items():
        ini = replace_line(ini, key, value)
    settings_dir = tmp_path / f"settings-{len(list(tmp_path.glob('settings-*')))}"
    settings_dir.mkdir()
    return store_config(load(write_config(settings_dir, ini), {}))


def new_store(kind: str, config: dict[str, Any]) -> Any:
    return SnapshotStore(**config) if kind == "in-process" else SnapshotProcess(config)


KINDS = ["in-process", "child-process"]
BOUNDS = {0: (0, 1000), 1: (0, 1000)}


def fill(store: Any, rng: random.Random, parts: dict[PartKey, int], offsets: dict[int, int],
         n: int, buckets: int = 6) -> dict[PartKey, int | None]:
    """Apply ``n`` random per-partition counts as the changelog's next records; update the model
    ``parts`` and ``offsets``."""
    changes: dict[PartKey, int | None] = {}
    for _ in range(n):
        key = (rng.randrange(2), (rng.choice(SERVERS), rng.choice(TOPICS)),
               rng.randrange(buckets) * 20)
        changes[key] = rng.choice([None, rng.randrange(1, 100)])
    for key, value in changes.items():
        if value is None:
            parts.pop(key, None)
        else:
            parts[key] = value
        offsets[key[0]] += 1
    progress = {p: Progress(offsets[p] - 1, 1000.0 + offsets[p]) for p in offsets}
    store.apply_records(records(changes), 50.0, dict(offsets), progress)
    return changes


def expected_counts(parts: dict[PartKey, int]) -> dict[tuple[Any, ...], int]:
    rows: dict[tuple[Any, ...], int] = {}
    for (_, (server, topic), start), n in parts.items():
        row = (server, topic, start, start + 20)
        rows[row] = rows.get(row, 0) + n
    return rows


def counts(store: Any) -> dict[tuple[Any, ...], int]:
    return {row: values[0] for row, values in snapshot_rows(store).items()}


@pytest.mark.parametrize("kind", KINDS)
def test_a_reopened_snapshot_resumes_with_its_checkpoint(tmp_path: Path, kind: str) -> None:
    config = config_of(tmp_path)
    rng = random.Random(7)
    parts: dict[PartKey, int] = {}
    offsets = {0: 0, 1: 0}
    store = new_store(kind, config)
    assert not store.open(BOUNDS).resumed  # nothing on disk yet
    for _ in range(5):
        fill(store, rng, parts, offsets, 40)
    generation, rows = store.generation, store.rows
    store.close()

    again = new_store(kind, config)
    try:
        checkpoint = again.open(BOUNDS)
        assert checkpoint.resumed, checkpoint.reason
        assert checkpoint.offsets == offsets
        assert checkpoint.progress == {p: Progress(o - 1, 1000.0 + o) for p, o in offsets.items()}
        assert (checkpoint.generation, checkpoint.rows) == (generation, rows)
        assert checkpoint.rows == len(expected_counts(parts)) > 0
        assert checkpoint.final_through == 50.0 - 20 - 20 and checkpoint.closing_s == 50.0
        assert counts(again) == expected_counts(parts)
        # it goes on from there: the next refresh is the next generation
        fill(again, rng, parts, offsets, 40)
        assert again.generation == generation + 1
        assert counts(again) == expected_counts(parts)
    finally:
        again.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_refresh_of_offsets_alone_is_stored_without_a_new_generation(tmp_path: Path,
                                                                        kind: str) -> None:
    config = config_of(tmp_path)
    store = new_store(kind, config)
    store.open(BOUNDS)
    assert store.apply_records(records({(0, ("s-1", "orders"), 0): 3}), 0.0, {0: 1, 1: 0}) == 1
    # progress records only: no row changes, but the offsets and progress move
    assert store.apply_records({}, 0.0, {0: 5, 1: 2}, {0: Progress(4, 9.0)}) == 1
    store.close()
    again = new_store(kind, config)
    try:
        checkpoint = again.open(BOUNDS)
        assert checkpoint.resumed
        assert checkpoint.offsets == {0: 5, 1: 2}
        assert checkpoint.progress == {0: Progress(4, 9.0)}
        assert checkpoint.generation == 1
    finally:
        again.close()


@pytest.mark.parametrize(("key", "value", "differs"), [
    ("bucket_interval", "30", "interval_s"),       # another state too
    ("grace", "60", "grace_s"),
    ("sqlite_table", "other", "table"),
    ("topic", "another", "state"),
])
def test_a_snapshot_of_other_settings_is_rebuilt(tmp_path: Path, key: str, value: str,
                                                 differs: str) -> None:
    store = SnapshotStore(**config_of(tmp_path))
    store.open(BOUNDS)
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3}), 0.0, {0: 1, 1: 0})
    old_generation = store.generation
    store.close()
    ini = SEED_INI if key != "grace" else SEED_INI.replace(
        "bucket_field = timestamp", "bucket_field = timestamp\ngrace = 20")
    other = SnapshotStore(**config_of(tmp_path, ini, **{key: value}))
    try:
        checkpoint = other.open(BOUNDS)
        assert not checkpoint.resumed
        assert "other settings" in checkpoint.reason and differs in checkpoint.reason
        assert checkpoint.offsets == {} and checkpoint.rows == 0
        with sqlite3.connect(other.path) as conn:
            table = other.table
            assert conn.execute(f'SELECT count(*) FROM "{table}"').fetchone() == (0,)
        # a rebuilt snapshot numbers its generations on: an RST_ID is never reused
        assert other.apply_records(records({(0, ("s-1", "orders"), 0): 2}), 0.0,
                                   {0: 1, 1: 0}) == old_generation + 1
    finally:
        other.close()


def test_a_changed_mapping_or_column_type_is_rebuilt(tmp_path: Path) -> None:
    store = SnapshotStore(**config_of(tmp_path))
    store.open(BOUNDS)
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3}), 0.0, {0: 1, 1: 0})
    store.close()
    for change in ({"mapped": ["topic", "server_name"]},
                   {"schema": {**store.schema, "count": "REAL"}}):
        other = SnapshotStore(**{**config_of(tmp_path), **change})
        try:
            checkpoint = other.open(BOUNDS)
            assert not checkpoint.resumed and "other settings" in checkpoint.reason
        finally:
            other.close()


def _two_commits_apart(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """A snapshot at its third commit, and a copy of its side file at its second."""
    config = config_of(tmp_path)
    store = SnapshotStore(**config)
    store.open(BOUNDS)
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3}), 0.0, {0: 1, 1: 0})
    store.close()  # the last connection: SQLite moves the WAL into the file
    saved = tmp_path / "saved-parts"
    shutil.copy(store.side_path, saved)
    store = SnapshotStore(**config)
    assert store.open(BOUNDS).resumed
    store.apply_records(records({(0, ("s-1", "orders"), 0): 5}), 0.0, {0: 2, 1: 0})
    store.close()
    return config, saved


def test_a_side_file_of_another_commit_is_rebuilt(tmp_path: Path) -> None:
    config, saved = _two_commits_apart(tmp_path)
    shutil.copy(saved, f"{config['path']}-parts")  # as if the side file's commit was lost
    store = SnapshotStore(**config)
    try:
        checkpoint = store.open(BOUNDS)
        assert not checkpoint.resumed
        assert "do not reflect the same refresh" in checkpoint.reason
        assert counts(store) == {}
    finally:
        store.close()


def test_a_side_file_of_another_snapshot_is_rebuilt(tmp_path: Path) -> None:
    """Same settings, same number of commits, but two snapshots: their files do not mix."""
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        config = config_of(tmp_path / name)
        store = SnapshotStore(**config)
        store.open(BOUNDS)
        store.apply_records(records({(0, ("s-1", "orders"), 0): len(name)}), 0.0, {0: 1, 1: 0})
        store.close()
        configs.append(config)
    shutil.copy(f"{configs[1]['path']}-parts", f"{configs[0]['path']}-parts")
    configs[0]["state"] = configs[1]["state"]  # identical settings, as far as they tell
    store = SnapshotStore(**configs[0])
    try:
        checkpoint = store.open(BOUNDS)
        assert not checkpoint.resumed
        assert "do not reflect the same refresh" in checkpoint.reason
    finally:
        store.close()


@pytest.mark.parametrize(("bounds", "resumed", "why"), [
    ({0: (0, 20), 1: (0, 4)}, True, ""),                 # at the end: nothing new
    ({0: (20, 30), 1: (4, 9)}, True, ""),                # compaction moved the start up to it
    ({0: (0, 19), 1: (0, 9)}, False, "holds offsets [0, 19]"),   # recreated: shorter
    ({0: (21, 40), 1: (0, 9)}, False, "holds offsets [21, 40]"),  # records deleted unread
    ({0: (0, 30)}, False, "changelog has [0]"),
    ({0: (0, 30), 1: (0, 9), 2: (0, 5)}, False, "changelog has [0, 1, 2]"),
])
def test_offsets_outside_the_changelog_are_rebuilt(tmp_path: Path, bounds: dict[int, Any],
                                                   resumed: bool, why: str) -> None:
    config = config_of(tmp_path)
    store = SnapshotStore(**config)
    store.open(BOUNDS)
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3}), 0.0, {0: 20, 1: 4})
    store.close()
    store = SnapshotStore(**config)
    try:
        checkpoint = store.open(bounds)
        assert checkpoint.resumed is resumed, checkpoint.reason
        assert why in checkpoint.reason
        assert counts(store) == ({("s-1", "orders", 0, 20): 3} if resumed else {})
    finally:
        store.close()


def test_a_snapshot_older_than_the_tombstones_last_is_rebuilt(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    store = SnapshotStore(**config)
    store.open(BOUNDS)
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3}), 0.0, {0: 1, 1: 0})
    stored_at = store.stored.refreshed_at_s
    store.close()
    store = SnapshotStore(**config)
    try:
        assert store.open(BOUNDS, max_age_s=100, now_s=stored_at + 99).resumed
        store.close()
        checkpoint = store.open(BOUNDS, max_age_s=100, now_s=stored_at + 101)
        assert not checkpoint.resumed and "may have dropped tombstones" in checkpoint.reason
    finally:
        store.close()


def test_a_torn_or_unreadable_side_file_is_rebuilt(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    store = SnapshotStore(**config)
    store.open(BOUNDS)
    store.apply_records(records({(0, ("s-1", "orders"), 0): 3}), 0.0, {0: 1, 1: 0})
    store.close()
    Path(f"{config['path']}-parts").write_bytes(b"not a database" * 100)
    store = SnapshotStore(**config)
    try:
        checkpoint = store.open(BOUNDS)
        assert not checkpoint.resumed and "cannot be read" in checkpoint.reason
        assert store.apply_records(records({(0, ("s-1", "orders"), 0): 2}), 0.0,
                                   {0: 1, 1: 0}) >= 1
        assert counts(store) == {("s-1", "orders", 0, 20): 2}
    finally:
        store.close()


def test_one_writer_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_of(tmp_path)
    first = SnapshotStore(**config)
    first.open(BOUNDS)
    monkeypatch.setattr(snapshot_store, "LOCK_TIMEOUT_S", 0.3)
    second = SnapshotStore(**config)
    try:
        with pytest.raises(SnapshotError, match="another process writes the snapshot"):
            second.open(BOUNDS)
        first.close()
        assert not second.open(BOUNDS).resumed  # first never stored offsets
    finally:
        first.close()
        second.close()


def test_a_snapshot_process_killed_mid_refresh_resumes_one_whole_refresh(tmp_path: Path,
                                                                         ) -> None:
    """SIGKILL the snapshot process while it applies large refreshes: the files reopen as of
    the refresh before or the one being applied, never part of one, and its counts are exact
    for the offsets it says it reflects."""
    config = config_of(tmp_path)
    rng = random.Random(11)
    parts: dict[PartKey, int] = {}
    offsets = {0: 0, 1: 0}
    process = SnapshotProcess(config)
    process.open(BOUNDS)
    fill(process, rng, parts, offsets, 100)
    interrupted = 0
    for kill_after_s in (0.05, 0.3, 0.6, 0.9, 0.0, 1.2, 0.45, 3.0):
        before = (dict(parts), dict(offsets))
        planned = dict(parts), dict(offsets)

        def big_refresh(target: Any = process, model: Any = planned) -> None:
            with contextlib.suppress(SnapshotError):  # killed mid-refresh
                fill(target, rng, model[0], model[1], 40_000, buckets=5_000)

        worker = threading.Thread(target=big_refresh)
        worker.start()
        time.sleep(kill_after_s)
        proc = process.child.proc
        assert proc is not None
        proc.kill()
        worker.join(60)
        process.close()
        process = SnapshotProcess(config)
        bounds = {p: (0, planned[1][p] + 10) for p in planned[1]}
        checkpoint = process.open(bounds)
        assert checkpoint.resumed, checkpoint.reason
        if checkpoint.offsets == before[1]:
            parts, offsets = before
            interrupted += 1
        else:  # the refresh committed before the kill (its answer may have been lost)
            assert checkpoint.offsets == planned[1]
            parts, offsets = planned
        assert counts(process) == expected_counts(parts)
        assert checkpoint.rows == len(expected_counts(parts))
    process.close()
    assert interrupted > 0  # a kill at once lands mid-refresh


def test_checkpoint_json_round_trip() -> None:
    checkpoint = Checkpoint(generation=4, offsets={0: 3}, progress={1: Progress(2, 3.5, 9.0)},
                            closing_s=float("-inf"), final_through=60.0, rows=2,
                            refreshed_at_s=1.5, resumed=True, reason="r")
    assert Checkpoint.from_json(orjson.loads(orjson.dumps(checkpoint.to_json()))) == checkpoint


def test_a_lost_side_file_is_rebuilt_above_the_tables_rst_ids(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    store = SnapshotStore(**config)
    store.open(BOUNDS)
    for n in range(1, 4):
        store.apply_records(records({(0, ("s-1", "orders"), 0): n}), 0.0, {0: n, 1: 0})
    assert store.generation == 3
    store.close()
    Path(f"{config['path']}-parts").unlink()
    store = SnapshotStore(**config)
    try:
        checkpoint = store.open(BOUNDS)
        assert not checkpoint.resumed and "no snapshot with a checkpoint" in checkpoint.reason
        assert store.apply_records(records({(0, ("s-1", "orders"), 0): 1}), 0.0,
                                   {0: 1, 1: 0}) == 4
    finally:
        store.close()


def test_partitions_with_records_not_counted_yet_are_waiting():
    """Only a partition known to have nothing left to count can be idle (lifecycle)."""
    state = ReaderState(3)
    assert state.waiting({}) == {0, 1, 2}  # no end offsets yet: unknown
    state.source_end = {0: 0, 1: 10, 2: 10}
    progress = {1: Progress(9, 5.0), 2: Progress(4, 5.0)}
    assert state.waiting(progress) == {2}  # 0 is empty, 1 counted to its end
    assert state.waiting({}) == {1, 2}
