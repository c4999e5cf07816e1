"""A full disk: the worker stops consuming and waits, nothing lost or counted twice.

``data_dir`` and ``sqlite_db`` live on a 96 MB tmpfs the test mounts (as root; skipped
otherwise), filled to its last 256 KB while messages arrive. The worker must stay up, answer
``/health`` 503 ``degraded`` naming the path, log it once, keep answering queries from what it
has, and once the filler is removed count on by itself and end exact against the topic.
The snapshot store alone is also filled (a smaller tmpfs): a refresh the disk refuses is
rolled back, its checkpoint unchanged, and applied once there is room.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bucket_app.errors import SnapshotFull
from bucket_app.snapshot.reader import SnapshotStore
from tests.support.kafka import (
    BackgroundProducer,
    bulk_records,
    create_topic,
    produce,
    unique,
)
from tests.support.worker import Worker, counts_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
LEFT_FREE = 256 * 1024


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the tests run as root in CI and make test)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int) -> Path:
    """A file taking all the space of ``directory``'s file system but ``leave`` bytes."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        chunk = b"\1" * (1 << 20)
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
        with contextlib.suppress(OSError):
            while True:  # the last megabyte, in small pieces
                out.write(chunk[:4096])
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def wait_for(what: str, check: object, timeout_s: float, worker: Worker) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.alive(), worker.tail()
        if check():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"not {what} in {timeout_s} s:\n{worker.tail()}")


def test_full_disk_pauses_counting_and_resumes_exact(tmp_path: Path) -> None:
    topic = unique("full")
    create_topic(topic, PARTITIONS)
    with tmpfs(tmp_path / "disk", "96m") as disk:
        worker = Worker(tmp_path / "w", topic=topic, app_id=unique("full"),
                        partitions=PARTITIONS, extra={
                            "data_dir": str(disk / "data"),
                            "sqlite_db": str(disk / "snapshot.sqlite3")})
        try:
            worker.start()
            first, expected = bulk_records(10_000, PARTITIONS, seed=1, prefix="a")
            worker.wait_caught_up(produce(topic, first))
            filler = fill(disk, LEFT_FREE)
            records, more = bulk_records(150_000, PARTITIONS, seed=2, prefix="b")
            expected.update(more)  # other servers: no key in common
            producer = BackgroundProducer(topic, records, chunk=2_000, pause_s=0.05).start()

            def full() -> bool:
                try:
                    answer = worker.get("/health")
                except OSError as exc:  # TimeoutError, URLError: a moment the disk fills
                    print(f"/health did not answer: {exc!r}")
                    return False
                reason = answer.json().get("reason", "")
                # counting stops once the tables cannot be written (the snapshot, on the same
                # disk, often fills first: counting goes on meanwhile, the reader waits)
                return answer.status == 503 and (
                    f"counts table (RocksDB) cannot write {disk}" in reason)

            full_at = wait_for("degraded", full, 120, worker)
            health = worker.get("/health")
            assert health.json()["status"] == "degraded", health.json()
            # stopped consuming (after the fetch being counted when the write failed):
            # nothing more counted while full, and queries still answer
            time.sleep(2)
            counted = worker.get("/health").json()["worker"]["counted"]
            time.sleep(10)
            held = worker.get("/health")
            assert held.status == 503 and held.headers["Retry-After"] == "1", held.json()
            assert held.json()["worker"]["counted"] == counted, (counted, held.json())
            answer = worker.get("/a/default")
            assert answer.status == 200 and answer.json(), answer.status
            full_for = time.monotonic() - full_at
            filler.unlink()
            freed_at = time.monotonic()
            producer.join()
            wait_for("healthy again", lambda: worker.get("/health").status == 200, 120, worker)
            resumed_s = time.monotonic() - freed_at
            worker.wait_read_to_end(topic, PARTITIONS)
            assert counts_of(worker) == expected
            log = worker.log_path.read_text(errors="replace")
            lines = [line for line in log.splitlines() if "disk full" in line
                     or "disk has room" in line or "resume" in line]
            assert "We experienced a crash" not in log
            assert sum("disk full:" in line for line in lines) <= 2, lines  # tables, snapshot
            assert any("disk has room again" in line for line in lines), lines
            print(f"\nfull disk: {sum(expected.values())} messages, 503 for "
                  f"{full_for + resumed_s:.1f} s (full {full_for:.1f} s, healthy "
                  f"{resumed_s:.1f} s after the space was freed), counted {counted} when "
                  f"it stopped, exact; log:\n" + "\n".join(lines))
        finally:
            worker.stop()


def test_snapshot_refresh_on_full_disk_is_rolled_back_and_retried(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        store = SnapshotStore(str(disk / "snap.sqlite3"), "default", 20, ["server_name"],
                              {"server_name": "TEXT", "bucket_start": "INTEGER",
                               "bucket_end": "INTEGER", "count": "INTEGER"})
        store.open({0: (0, 0)})
        expected: dict[tuple[str, int], int] = {}
        filler = None
        refused = 0
        offset = 0
        try:
            for round_ in range(400):
                changes = {(0, (f"s-{round_}-{i}",), 20 * i): (i + 1, 0) for i in range(500)}
                offset += 500
                if round_ == 2:
                    filler = fill(disk, 64 * 1024)
                before = store.stored
                try:
                    store.apply(changes, offsets={0: offset})
                except SnapshotFull:
                    refused += 1
                    assert store.stored == before  # the checkpoint did not move
                    assert filler is not None
                    filler.unlink()
                    store.apply(changes, offsets={0: offset})  # the same refresh, once room
                    filler = None
                expected.update({(k[1][0], k[2]): v[0] for k, v in changes.items()})
                if refused:
                    break
            assert refused, "the disk never filled"
            conn = store._connect()  # a fresh connection sees what was committed
            rows = dict(((name, start), count) for name, start, count in conn.execute(
                'SELECT server_name, bucket_start, count FROM "default"'))
            assert rows == expected
            assert store.stored.offsets == {0: offset}
        finally:
            store.close()
