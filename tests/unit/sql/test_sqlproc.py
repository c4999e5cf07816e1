"""Tests for bucket_app.sql.pool: user SQL in real child processes over real SQLite files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bucket_app.errors import HttpError
from bucket_app.sql import pool as sqlproc
from bucket_app.sql.pool import SqlPool
from bucket_app.sql.sandbox import SqlSandbox, json_default
from tests.support.sqlite import make_db

# a query that runs until the time limit stops it
ENDLESS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "snapshot.sqlite"
    rows = [(f"srv-{i % 7}", f"t-{i % 3}", i * 60, i * 60 + 60, i % 11 + 1, 1) for i in range(500)]
    writer = make_db(path, "default", rows)
    writer.execute("CREATE TABLE blobs (b BLOB, r REAL)")
    writer.execute("INSERT INTO blobs VALUES (x'00ff10', 0.30000000000000004)")
    yield path
    writer.close()


@pytest.fixture
def pool(db: Path) -> Iterator[SqlPool]:
    pool = SqlPool(2, str(db), "default", row_limit=100, time_limit_ms=300)
    yield pool
    pool.close()


def child_pids(pool: SqlPool) -> list[int]:
    return [child.proc.pid for child in pool._children if child.proc is not None]


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            # our own child: reap it, or it stays a zombie that kill(pid, 0) still finds
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(("sql", "params", "row_limit"), [
    ("SELECT * FROM default WHERE server_name = ? ORDER BY bucket_start", ["srv-3"], None),
    ("SELECT * FROM default ORDER BY rowid", None, None),  # 500 rows, limit 100: truncated
    ("SELECT * FROM default ORDER BY rowid", None, 7),
    ("SELECT server_name, sum(count) AS n FROM default GROUP BY 1 ORDER BY 1", None, None),
    ("SELECT * FROM blobs", None, None),
    ("SELECT 1 AS a, 2 AS a", None, None),
    ("SELECT * FROM default WHERE bucket_start > :t ORDER BY rowid", {"t": 29000}, None),
])
def test_pool_answers_what_the_sandbox_answers(db: Path, pool: SqlPool, sql: str,
                                               params: object, row_limit: int | None) -> None:
    local = SqlSandbox(str(db), "default", row_limit=100, time_limit_ms=300)
    expected = local.execute(sql, params, row_limit=row_limit)  # type: ignore[arg-type]
    answer = pool.execute(sql, params, row_limit=row_limit)  # type: ignore[arg-type]
    assert answer.columns == expected.columns
    assert answer.truncated == expected.truncated
    assert answer.row_count == len(expected.rows)
    encoded = orjson.dumps({"rows": answer.rows})
    assert encoded == orjson.dumps({"rows": expected.rows}, default=json_default)
    assert orjson.loads(encoded)["rows"] == orjson.loads(
        orjson.dumps(expected.rows, default=json_default))


def test_blobs_arrive_as_base64_and_reals_exact(pool: SqlPool) -> None:
    answer = pool.execute("SELECT * FROM blobs")
    assert orjson.loads(orjson.dumps(answer.rows)) == [{"b": "AP8Q", "r": 0.30000000000000004}]


@pytest.mark.parametrize(("sql", "status", "words"), [
    ("PRAGMA table_info(default)", 400, "only SELECT"),
    ("SELECT * FROM nope", 400, "no such table"),
    ("SELECT * FROM default; SELECT 1", 400, "one statement"),
    ("SELECT load_extension('x')", 403, "load_extension"),
    (ENDLESS, 400, "time limit of 300 ms"),
])
def test_errors_cross_the_pipe_unchanged(db: Path, pool: SqlPool, sql: str, status: int,
                                         words: str) -> None:
    local = SqlSandbox(str(db), "default", row_limit=100, time_limit_ms=300)
    with pytest.raises(HttpError) as expected:
        local.execute(sql)
    with pytest.raises(HttpError) as answer:
        pool.execute(sql)
    assert answer.value.status == expected.value.status == status
    assert words in answer.value.message
    assert answer.value.as_json() == expected.value.as_json()
    # the child that answered the error still answers
    assert pool.execute("SELECT count(*) AS n FROM default").row_count == 1


def test_missing_snapshot_is_503(tmp_path: Path) -> None:
    pool = SqlPool(1, str(tmp_path / "none.sqlite"), "default", row_limit=10, time_limit_ms=300)
    try:
        with pytest.raises(HttpError) as answer:
            pool.execute("SELECT 1")
        assert answer.value.status == 503
    finally:
        pool.close()


def test_concurrent_queries_each_get_their_own_answer(pool: SqlPool) -> None:
    answers: dict[int, list[dict[str, object]]] = {}

    def ask(i: int) -> None:
        for _ in range(20):
            result = pool.execute("SELECT ? AS i, count(*) AS n FROM default", [i])
            answers.setdefault(i, []).append(orjson.loads(orjson.dumps(result.rows))[0])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {i: rows for i, rows in answers.items()} == {
        i: [{"i": i, "n": 500}] * 20 for i in range(4)}


def test_a_dead_child_is_replaced_before_the_next_query(pool: SqlPool) -> None:
    pool.start()
    before = child_pids(pool)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
    assert pool.execute("SELECT count(*) AS n FROM default").row_count == 1
    assert pool.execute("SELECT count(*) AS n FROM default").row_count == 1
    after = child_pids(pool)
    assert len(after) == 2 and not set(after) & set(before)


def test_a_child_killed_mid_query_answers_503_and_is_replaced(db: Path) -> None:
    pool = SqlPool(1, str(db), "default", row_limit=100, time_limit_ms=5000)
    try:
        pool.start()
        (pid,) = child_pids(pool)
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        with pytest.raises(HttpError) as answer:
            pool.execute(ENDLESS)
        assert answer.value.status == 503
        assert pool.execute("SELECT count(*) AS n FROM default").row_count == 1
        assert child_pids(pool) != [pid]
    finally:
        pool.close()


def test_a_hung_child_is_killed_after_the_time_limit_and_grace(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed at the hard deadline, its query is answered as over its time limit (a 400 naming
    sql_time_limit, as an interrupted one), not as a failure that invites a retry."""
    monkeypatch.setattr(sqlproc, "HANG_GRACE_S", 0.5)
    pool = SqlPool(1, str(db), "default", row_limit=100, time_limit_ms=200)
    try:
        pool.start()
        (pid,) = child_pids(pool)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(HttpError) as answer:
            pool.execute("SELECT 1 AS one")
        assert answer.value.status == 400
        assert "sql_time_limit" in answer.value.message
        assert answer.value.context["time_limit_ms"] == 200
        assert time.monotonic() - started < 5
        assert wait_gone(pid)
        assert orjson.loads(orjson.dumps(pool.execute("SELECT 1 AS one").rows)) == [{"one": 1}]
    finally:
        pool.close()


def test_children_exit_when_the_worker_is_killed(db: Path) -> None:
    """SIGKILL of the worker closes the children's stdin; they must not outlive it."""
    script = textwrap.dedent(f"""
        import sys, time
        from bucket_app.sql.pool import SqlPool
        pool = SqlPool(2, {str(db)!r}, "default", row_limit=10, time_limit_ms=300)
        pool.execute("SELECT 1")
        pool.start()
        print(" ".join(str(c.proc.pid) for c in pool._children), flush=True)
        time.sleep(60)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        pids = [int(pid) for pid in worker.stdout.readline().split()]
        assert len(pids) == 2
        worker.kill()
        worker.wait()
        for pid in pids:
            assert wait_gone(pid), f"SQL child {pid} outlived its worker"
    finally:
        worker.kill()
        worker.wait()


def test_pool_rejects_bad_limits_in_the_worker(db: Path) -> None:
    with pytest.raises(ValueError, match="row_limit"):
        SqlPool(1, str(db), "default", row_limit=-1, time_limit_ms=300)


def test_snapshot_written_after_start_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "late.sqlite"
    pool = SqlPool(1, str(path), "default", row_limit=10, time_limit_ms=300)
    try:
        pool.start()
        with pytest.raises(HttpError):
            pool.execute("SELECT count(*) AS n FROM default")
        writer = make_db(path, "default")
        try:
            answer = pool.execute("SELECT count(*) AS n FROM default")
            assert orjson.loads(orjson.dumps(answer.rows)) == [{"n": 3}]
            writer.execute("INSERT INTO \"default\" VALUES ('x', 'y', 0, 60, 1, 9)")
            answer = pool.execute("SELECT count(*) AS n FROM default")
            assert orjson.loads(orjson.dumps(answer.rows)) == [{"n": 4}]
        finally:
            writer.close()
    finally:
        pool.close()


def test_a_printf_sqlite_cannot_interrupt_is_refused_before_it_starts(
        db: Path, pool: SqlPool) -> None:
    """SQLite writes printf('%.*c', 2000000000, 'x') without calling the progress handler
    (7-16 s past any time limit): its width is refused at once, whichever way it is given."""
    for sql in ("SELECT printf('%.*c', 2000000000, 'x') AS v",
                "SELECT format('%2000000000d', 1) AS v",
                "SELECT printf('%s %.*c', 'a', (SELECT 1999999999 + 1), 'x') AS v",
                "SELECT printf('%0*d', '2e9', 7) AS v"):
        started = time.monotonic()
        with pytest.raises(HttpError) as answer:
            pool.execute(sql)
        assert answer.value.status == 400, sql
        assert "printf width or precision of 2000000000" in answer.value.message, sql
        assert time.monotonic() - started < 1, sql
    assert pool.execute("SELECT printf('%05.1f|%-4s|%c', 3.14159, 'ab', 'xyz') AS v"
                        ).rows is not None
