"""Tests for bucket_app.sql.sandbox against real WAL-mode SQLite files under tmp_path."""

from __future__ import annotations

import ctypes
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bucket_app.errors import HttpError
from bucket_app.sql.sandbox import (
    SQLITE_KEYWORDS,
    QueryResult,
    SqlSandbox,
    check_statement,
    quote_identifier,
    quote_table_name,
)
from tests.support.sqlite import COLUMNS, ROWS, make_db


def row_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM {quote_identifier(table)}").fetchone()
    return int(count)


@pytest.fixture
def default_db(tmp_path: Path):
    path = tmp_path / "snapshot.sqlite"
    writer = make_db(path, "default")
    yield path, writer
    writer.close()


@pytest.fixture
def sandbox(default_db) -> SqlSandbox:
    path, _ = default_db
    return SqlSandbox(str(path), "default", row_limit=100, time_limit_ms=1000)


@pytest.fixture
def counts_sandbox(tmp_path: Path) -> SqlSandbox:
    path = tmp_path / "counts.sqlite"
    make_db(path, "counts").close()  # closed: the reader must cope without -wal/-shm
    return SqlSandbox(str(path), "counts", row_limit=100, time_limit_ms=1000)


def as_tuples(result: QueryResult) -> list[tuple[object, ...]]:
    return [tuple(row.values()) for row in result.rows]


# --- the seed's examples ---------------------------------------------------------------


def test_seed_example_with_reserved_table_name(sandbox: SqlSandbox) -> None:
    result = sandbox.execute("Select * FROM default WHERE count=1")
    assert result.columns == COLUMNS
    assert as_tuples(result) == [ROWS[0], ROWS[2]]
    assert result.rows[0] == dict(zip(COLUMNS, ROWS[0], strict=True))
    assert list(result.rows[0]) == COLUMNS
    assert result.truncated is False
    assert result.elapsed_ms >= 0


def test_seed_example_no_match(sandbox: SqlSandbox) -> None:
    result = sandbox.execute("Select * FROM default WHERE count=0")
    assert result.rows == []
    assert result.columns == COLUMNS
    assert result.truncated is False


def test_plain_table_name(counts_sandbox: SqlSandbox) -> None:
    result = counts_sandbox.execute("SELECT topic, sum(count) AS n FROM counts GROUP BY topic")
    assert as_tuples(result) == [("orders", 4), ("payments", 1)]


def test_params_qmark_and_named(sandbox: SqlSandbox) -> None:
    qmark = sandbox.execute(
        "SELECT bucket_start FROM default WHERE topic = ? AND count = ?", ["orders", 3]
    )
    assert qmark.rows == [{"bucket_start": 60}]
    named = sandbox.execute(
        "SELECT server_name FROM default WHERE RST_ID = :rst ORDER BY bucket_start", {"rst": 8}
    )
    assert named.rows == [{"server_name": "srv-b"}]


def test_trailing_semicolon_and_comments_are_fine(sandbox: SqlSandbox) -> None:
    result = sandbox.execute("-- hello\n/* there */ SELECT count(*) AS n FROM default; -- bye")
    assert result.rows == [{"n": 3}]


def test_with_values_explain_allowed(sandbox: SqlSandbox) -> None:
    assert sandbox.execute("VALUES (1, 2)").columns == ["column1", "column2"]
    cte = (
        "WITH recursive c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5)"
        " SELECT x FROM c"
    )
    assert [row["x"] for row in sandbox.execute(cte).rows] == [1, 2, 3, 4, 5]
    assert sandbox.execute("EXPLAIN QUERY PLAN SELECT * FROM default").rows


def test_json_each_works(sandbox: SqlSandbox) -> None:
    # An eponymous virtual table: SQLite consults the authorizer while setting it up.
    result = sandbox.execute("SELECT value FROM json_each('[1, 2]')")
    assert result.rows == [{"value": 1}, {"value": 2}]


def test_semicolon_in_string_is_not_a_second_statement(sandbox: SqlSandbox) -> None:
    assert sandbox.execute("SELECT ';' AS x").rows == [{"x": ";"}]
    assert sandbox.execute('SELECT 1 AS "a;b"').rows == [{"a;b": 1}]


def test_sees_latest_committed_data(default_db, sandbox: SqlSandbox) -> None:
    _, writer = default_db
    assert sandbox.execute("SELECT count(*) AS n FROM default").rows == [{"n": 3}]
    writer.execute('INSERT INTO "default" VALUES (?, ?, ?, ?, ?, ?)', ("srv-c", "t", 0, 60, 1, 9))
    assert sandbox.execute("SELECT count(*) AS n FROM default").rows == [{"n": 4}]


def test_usable_from_other_threads(sandbox: SqlSandbox) -> None:
    results: list[int] = []

    def worker() -> None:
        results.append(len(sandbox.execute("SELECT * FROM default").rows))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [3, 3, 3, 3]


# --- refusals --------------------------------------------------------------------------

REFUSED = [
    ('INSERT INTO "default" VALUES (1, 2, 3, 4, 5, 6)', "only SELECT"),
    ("UPDATE default SET count = 0", "only SELECT"),
    ('DELETE FROM "default"', "only SELECT"),
    ('DROP TABLE "default"', "only SELECT"),
    ("CREATE TABLE x (a)", "only SELECT"),
    ("ATTACH DATABASE ':memory:' AS other", "only SELECT"),
    ("PRAGMA journal_mode=delete", "only SELECT"),
    ("PRAGMA table_info('default')", "only SELECT"),
    ("BEGIN", "only SELECT"),
    ("SELECT load_extension('x')", "load_extension"),
    ("SELECT * FROM pragma_table_info('default')", "pragma table_info is not allowed"),
    ("SELECT * FROM pragma_database_list", "pragma database_list is not allowed"),
    ("EXPLAIN UPDATE sqlite_master SET sql = ''", "may not be modified"),
    ('SELECT 1; DROP TABLE "default"', "one statement"),
    ('SELECT 1;; DROP TABLE "default";', "one statement"),
    ("", "empty"),
    ("   \n ", "empty"),
    ("-- just a comment", "empty"),
    ("/* only */ ; -- comments", "empty"),
    ("SELECT 'unterminated", "incomplete"),
    ("SELECT 1 /* open comment", "incomplete"),
    # found by schemathesis: sqlite3 raised ValueError and the SQL process died (503)
    ("SELECT 1\x00", "NUL character"),
    ("\x00", "NUL character"),
]


@pytest.mark.parametrize(("sql", "fragment"), REFUSED)
def test_refusals(default_db, sandbox: SqlSandbox, sql: str, fragment: str) -> None:
    path, _ = default_db
    with pytest.raises(HttpError) as info:
        sandbox.execute(sql)
    error = info.value
    assert 400 <= error.status < 500
    assert fragment in error.message
    assert error.context["sql"] == sql
    assert error.as_json()["error"] == error.message
    assert row_count(path, "default") == 3
    assert {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")} == {
        "default"
    }


def test_authorizer_denial_is_403(sandbox: SqlSandbox) -> None:
    with pytest.raises(HttpError) as info:
        sandbox.execute("SELECT load_extension('x')")
    assert info.value.status == 403
    assert info.value.message == "query refused: the function load_extension is not allowed"


def test_authorizer_denies_writes_in_explain(default_db, sandbox: SqlSandbox) -> None:
    # EXPLAIN passes the statement check; the authorizer still sees the DELETE it compiles.
    path, _ = default_db
    with pytest.raises(HttpError) as info:
        sandbox.execute('EXPLAIN DELETE FROM "default"')
    assert info.value.status == 403
    assert "delete" in info.value.message
    assert row_count(path, "default") == 3


def test_statement_check_is_400(sandbox: SqlSandbox) -> None:
    with pytest.raises(HttpError) as info:
        sandbox.execute("PRAGMA journal_mode=delete")
    assert info.value.status == 400
    assert (
        info.value.message
        == "only SELECT, WITH, VALUES or EXPLAIN queries are allowed, not 'PRAGMA'"
    )


def test_syntax_error_is_400_with_sqlite_message(sandbox: SqlSandbox) -> None:
    sql = "SELECT * FORM default"
    with pytest.raises(HttpError) as info:
        sandbox.execute(sql)
    assert info.value.status == 400
    assert info.value.as_json() == {"error": 'near "FORM": syntax error', "status": 400, "sql": sql}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM nope", "no such table: nope"),
        ("SELECT nope FROM default", "no such column: nope"),
    ],
)
def test_unknown_names_are_400(sandbox: SqlSandbox, sql: str, message: str) -> None:
    with pytest.raises(HttpError) as info:
        sandbox.execute(sql)
    assert (info.value.status, info.value.message) == (400, message)


@pytest.mark.parametrize("params", [[], [1, 2], {"other": 1}, [object()], [2**70]])
def test_bad_params_are_400(sandbox: SqlSandbox, params: object) -> None:
    with pytest.raises(HttpError) as info:
        sandbox.execute("SELECT * FROM default WHERE count = :count", params)  # type: ignore[arg-type]
    assert info.value.status == 400


# --- limits ----------------------------------------------------------------------------


def test_time_limit(default_db) -> None:
    path, _ = default_db
    sandbox = SqlSandbox(str(path), "default", time_limit_ms=100)
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)"
        " SELECT count(*) FROM c"
    )
    started = time.monotonic()
    with pytest.raises(HttpError) as info:
        sandbox.execute(slow)
    assert time.monotonic() - started < 1.0
    assert info.value.status == 400
    assert info.value.message == "query exceeded the time limit of 100 ms (sql_time_limit)"
    assert info.value.context["time_limit_ms"] == 100
    # The sandbox still works after an interrupted query.
    assert sandbox.execute("SELECT 1 AS one").rows == [{"one": 1}]


def test_truncation(default_db) -> None:
    path, _ = default_db
    sandbox = SqlSandbox(str(path), "default", row_limit=2)
    result = sandbox.execute("SELECT * FROM default ORDER BY bucket_start, server_name")
    assert len(result.rows) == 2
    assert result.truncated is True
    exact = SqlSandbox(str(path), "default", row_limit=3).execute("SELECT * FROM default")
    assert (len(exact.rows), exact.truncated) == (3, False)


def test_missing_snapshot_is_503(tmp_path: Path) -> None:
    sandbox = SqlSandbox(str(tmp_path / "not-yet.sqlite"), "default")
    with pytest.raises(HttpError) as info:
        sandbox.execute("SELECT * FROM default")
    assert info.value.status == 503
    assert info.value.message == "snapshot not ready"
    assert not (tmp_path / "not-yet.sqlite").exists()  # mode=ro must not create it


def test_path_with_uri_characters(tmp_path: Path) -> None:
    path = tmp_path / "odd dir?#%" / "snap shot.sqlite"
    path.parent.mkdir()
    make_db(path, "counts").close()
    result = SqlSandbox(str(path), "counts").execute("SELECT count(*) AS n FROM counts")
    assert result.rows == [{"n": 3}]


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="row_limit"):
        SqlSandbox("x", "t", row_limit=-1)
    with pytest.raises(ValueError, match="time_limit_ms"):
        SqlSandbox("x", "t", time_limit_ms=0)


# --- pure helpers ----------------------------------------------------------------------


def test_quote_identifier() -> None:
    assert quote_identifier("default") == '"default"'
    assert quote_identifier('we"ird') == '"we""ird"'


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM default", 'SELECT * FROM "default"'),
        ("select * from DEFAULT where count=1", 'select * from "DEFAULT" where count=1'),
        ("SELECT * FROM x JOIN default ON 1", 'SELECT * FROM x JOIN "default" ON 1'),
        (
            "SELECT * FROM x LEFT OUTER JOIN default USING (a) NATURAL JOIN default",
            'SELECT * FROM x LEFT OUTER JOIN "default" USING (a) NATURAL JOIN "default"',
        ),
        ("SELECT * FROM x, default", 'SELECT * FROM x, "default"'),
        ("SELECT * FROM x AS a, default AS b", 'SELECT * FROM x AS a, "default" AS b'),
        (
            "SELECT * FROM x JOIN y ON x.a = y.a, default",
            'SELECT * FROM x JOIN y ON x.a = y.a, "default"',
        ),
        ("SELECT * FROM main.default", 'SELECT * FROM main."default"'),
        ("SELECT * FROM\n-- c\n  default", 'SELECT * FROM\n-- c\n  "default"'),
        (
            "SELECT a, (SELECT 1 FROM default) FROM (SELECT b, c FROM default) AS t, default",
            'SELECT a, (SELECT 1 FROM "default") FROM (SELECT b, c FROM "default") AS t, "default"',
        ),
        # Not table positions, or already quoted: untouched.
        ("SELECT 'FROM default' FROM t", "SELECT 'FROM default' FROM t"),
        ("SELECT 1 AS default", "SELECT 1 AS default"),
        ("SELECT a, default FROM t", "SELECT a, default FROM t"),
        ("SELECT * FROM t WHERE a IN (1, default)", "SELECT * FROM t WHERE a IN (1, default)"),
        ("SELECT * FROM t WHERE x, default", "SELECT * FROM t WHERE x, default"),
        ('SELECT * FROM "default"', 'SELECT * FROM "default"'),
        ("SELECT * FROM [default]", "SELECT * FROM [default]"),
        ("SELECT * FROM `default`", "SELECT * FROM `default`"),
        ("SELECT * FROM defaults", "SELECT * FROM defaults"),
        ("SELECT * FROM /* default */ t", "SELECT * FROM /* default */ t"),
        (
            "SELECT * FROM t WHERE a IS NOT DISTINCT FROM default",
            "SELECT * FROM t WHERE a IS NOT DISTINCT FROM default",
        ),
        ("SELECT * FROM t WHERE a = :from, default", "SELECT * FROM t WHERE a = :from, default"),
    ],
)
def test_quote_table_name(sql: str, expected: str) -> None:
    assert quote_table_name(sql, "default") == expected


def test_quote_table_name_only_when_needed() -> None:
    assert quote_table_name("SELECT * FROM counts", "counts") == "SELECT * FROM counts"
    assert quote_table_name("SELECT * FROM order JOIN x", "order") == 'SELECT * FROM "order" JOIN x'
    assert (
        quote_table_name("SELECT * FROM my-table AS t", "my-table")
        == 'SELECT * FROM "my-table" AS t'
    )
    assert quote_table_name("SELECT * FROM my-tables", "my-table") == "SELECT * FROM my-tables"


def test_quoted_keyword_table_runs(tmp_path: Path) -> None:
    path = tmp_path / "order.sqlite"
    make_db(path, "order").close()
    sandbox = SqlSandbox(str(path), "order")
    result = sandbox.execute("SELECT o.topic FROM order AS o WHERE o.count = 3")
    assert result.rows == [{"topic": "orders"}]


def test_check_statement_accepts_queries() -> None:
    for sql in [
        "SELECT 1",
        "  with x AS (SELECT 1) SELECT * FROM x;",
        "values (1)",
        "Explain SELECT 1",
    ]:
        check_statement(sql)


def test_keywords_match_the_linked_sqlite() -> None:
    import _sqlite3

    try:
        lib = ctypes.CDLL(_sqlite3.__file__)
        count = lib.sqlite3_keyword_count()
    except (OSError, AttributeError):
        pytest.skip("sqlite3_keyword_name is not reachable through ctypes here")
    names = set()
    for index in range(count):
        name = ctypes.c_char_p()
        length = ctypes.c_int()
        lib.sqlite3_keyword_name(index, ctypes.byref(name), ctypes.byref(length))
        assert name.value is not None
        names.add(name.value[: length.value].decode())
    assert names <= SQLITE_KEYWORDS
    assert {
        "DEFAULT",
        "ORDER",
        "GROUP",
        "SELECT",
        "TABLE",
        "INDEX",
        "WHERE",
        "FROM",
    } <= SQLITE_KEYWORDS


def test_a_huge_value_is_refused_not_carried(sandbox: SqlSandbox) -> None:
    """SQLITE_LIMIT_LENGTH bounds one value: zeroblob(300 MB) is a 400, not 300 MB of JSON."""
    from bucket_app.sql.sandbox import MAX_VALUE_BYTES

    assert len(sandbox.execute(f"SELECT zeroblob({MAX_VALUE_BYTES}) AS b").rows[0]["b"]) > 0
    with pytest.raises(HttpError) as caught:
        sandbox.execute("SELECT zeroblob(300000000) AS b")
    assert caught.value.status == 400
    assert "too big" in caught.value.message
