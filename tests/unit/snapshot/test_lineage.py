"""Changelog identity: a snapshot resumes only from the changelog topic it was read from.

Real SQLite files under tmp_path, in the worker's child process as well as in this one; the
topic ids are strings as Kafka prints them (the broker's side is in
tests/integration/test_snapshot_resume.py).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from bucket_app.settings import load
from bucket_app.snapshot import lineage
from bucket_app.snapshot.process import SnapshotProcess
from bucket_app.snapshot.store import SnapshotStore, store_config
from tests.support.settings import SEED_INI, write_config

OLD_ID, NEW_ID = "q0Kc3IVUTx2y0dvRlN1ifw", "bY9Ybq7dQ3CTuo1C0nxe9Q"
KEY = orjson.dumps([[0, "s-1", "orders"], [0.0, 19.9]])
# the changelog grew past the stored offsets: within bounds, so offsets alone would resume
GROWN = {0: (0, 5_000), 1: (0, 5_000)}


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    ini = SEED_INI.replace("sqlite_db = :memory:", f"sqlite_db = {tmp_path}/snap.sqlite3")
    return store_config(load(write_config(tmp_path, ini), {}))


def new_store(kind: str, config: dict[str, Any]) -> Any:
    return SnapshotStore(**config) if kind == "in-process" else SnapshotProcess(config)


def stored_snapshot(config: dict[str, Any], topic_id: str | None) -> None:
    """A snapshot of one row (count 3) read up to offsets {0: 20, 1: 4} of ``topic_id``."""
    store = SnapshotStore(**config)
    store.open({0: (0, 20), 1: (0, 4)}, topic_id=topic_id)
    store.apply_records({KEY: orjson.dumps([3, 17])}, 0.0, {0: 20, 1: 4})
    store.close()


def rows(config: dict[str, Any]) -> list[tuple[Any, ...]]:
    with sqlite3.connect(config["path"]) as conn:
        return conn.execute('SELECT server_name, "count" FROM "default"').fetchall()


@pytest.mark.parametrize("kind", ["in-process", "child-process"])
def test_the_same_topic_id_resumes(config: dict[str, Any], kind: str) -> None:
    stored_snapshot(config, OLD_ID)
    store = new_store(kind, config)
    try:
        checkpoint = store.open(GROWN, topic_id=OLD_ID)
        assert checkpoint.resumed, checkpoint.reason
        assert checkpoint.offsets == {0: 20, 1: 4}
        assert rows(config) == [("s-1", 3)]
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["in-process", "child-process"])
def test_a_recreated_changelog_grown_past_the_checkpoint_is_rebuilt(config: dict[str, Any],
                                                                    kind: str) -> None:
    stored_snapshot(config, OLD_ID)
    store = new_store(kind, config)
    try:
        checkpoint = store.open(GROWN, topic_id=NEW_ID)
        assert not checkpoint.resumed
        assert checkpoint.offsets == {}  # read from the beginning
        assert NEW_ID in checkpoint.reason and OLD_ID in checkpoint.reason
        assert "deleted and recreated" in checkpoint.reason
        assert rows(config) == []  # nothing of the old history is kept
        # and the rebuilt files are stamped with the new id: the next start resumes them
        store.apply_records({KEY: orjson.dumps([2, 9])}, 0.0, {0: 30, 1: 4})
        store.close()
        store = new_store(kind, config)
        again = store.open(GROWN, topic_id=NEW_ID)
        assert again.resumed, again.reason
        assert rows(config) == [("s-1", 2)]
    finally:
        store.close()


def test_a_recreated_changelog_shorter_than_the_checkpoint_is_rebuilt(
        config: dict[str, Any]) -> None:
    """Same id or not, an end below a stored offset is not the history the snapshot read."""
    stored_snapshot(config, OLD_ID)
    for topic_id, why in ((OLD_ID, "holds offsets [0, 7]"), (NEW_ID, "deleted and recreated")):
        store = SnapshotStore(**config)
        try:
            checkpoint = store.open({0: (0, 7), 1: (0, 4)}, topic_id=topic_id)
            assert not checkpoint.resumed and why in checkpoint.reason, checkpoint.reason
        finally:
            store.close()
        stored_snapshot(config, OLD_ID)


def test_a_checkpoint_from_before_topic_ids_is_rebuilt_once(config: dict[str, Any]) -> None:
    stored_snapshot(config, OLD_ID)
    # as the previous version wrote it: no lineage entry
    with sqlite3.connect(f"{config['path']}-parts") as conn:
        (doc,) = conn.execute("SELECT doc FROM checkpoint WHERE id = 0").fetchone()
        old = orjson.loads(doc)
        del old[lineage.KEY]
        conn.execute("UPDATE checkpoint SET doc = ? WHERE id = 0", (orjson.dumps(old),))
    store = SnapshotStore(**config)
    try:
        checkpoint = store.open(GROWN, topic_id=OLD_ID)
        assert not checkpoint.resumed and "predates topic ids" in checkpoint.reason
    finally:
        store.close()


def test_without_topic_ids_the_offsets_decide() -> None:
    """Brokers before Kafka 2.8 give no ids: nothing to compare, on either side."""
    assert lineage.mismatch(lineage.stamp(None), None, "c") is None
    assert lineage.mismatch({}, None, "c") is None
    assert lineage.mismatch(lineage.stamp(OLD_ID), OLD_ID, "c") is None
    assert "give no topic id" in (lineage.mismatch(lineage.stamp(OLD_ID), None, "c") or "")
    assert "unknown" in (lineage.mismatch(lineage.stamp(None), NEW_ID, "c") or "")
