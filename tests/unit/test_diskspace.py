"""A full disk in the log and /health: one line per outage and writer, the reason while it
lasts (bucket_app.diskspace). The writers themselves are tested on a real full tmpfs in
tests/integration/test_full_disk.py."""

from __future__ import annotations

import errno
import logging
import sqlite3

from bucket_app import diskspace


def test_an_outage_is_one_line_however_many_retries_and_one_when_it_ends(caplog):
    clock = [100.0]
    full = diskspace.FullDisk(clock=lambda: clock[0])
    caplog.set_level(logging.INFO, logger="bucket_app.diskspace")
    for _ in range(50):
        full.failed("the tables", "/data/t", OSError(errno.ENOSPC, "No space left"), "paused")
    clock[0] += 12
    assert full.waiting("the tables")
    assert full.reasons() == [
        "disk full: the tables cannot write /data/t for 12 s ([Errno 28] No space left)"]
    full.recovered("the tables")
    full.recovered("the tables")  # nothing to say twice
    assert full.reasons() == [] and not full.waiting("the tables")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("disk full: the tables cannot write /data/t")
    assert lines[1] == "disk has room again: the tables wrote /data/t after 12.0 s and 49 retries"


def test_what_counts_as_a_full_disk():
    assert diskspace.is_full(OSError(errno.ENOSPC, "No space left on device"))
    assert diskspace.is_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # rocksdict raises a bare Exception with RocksDB's status text
    assert diskspace.is_full(Exception(
        "IO error: No space left on device: While appending to file: /d/000004.log"))
    assert diskspace.is_full(sqlite3.OperationalError("database or disk is full"))
    assert not diskspace.is_full(OSError(errno.EACCES, "Permission denied"))
    assert not diskspace.is_full(sqlite3.OperationalError("disk I/O error"))
    assert not diskspace.is_full(ValueError("bad"))
