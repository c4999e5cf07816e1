"""The sandbox's printf: SQLite's own for every ordinary format, refused when a width or
precision is wider than a value may be (work SQLite cannot interrupt)."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from bucket_app.sql.sandbox import MAX_VALUE_BYTES, BoundedPrintf, printf_width

SPECS = st.builds(
    lambda flags, width, precision, kind: f"%{flags}{width}{precision}{kind}",
    st.sampled_from(["", "-", "0", "+", " ", "#", ",", "!", "-0"]),
    st.sampled_from(["", "*", "3", "12"]),
    st.sampled_from(["", ".", ".*", ".2", ".10"]),
    st.sampled_from(list("dixXofeEgGcsqQw%")),
)
VALUES = st.one_of(st.none(), st.integers(-10**6, 10**6), st.floats(-1e6, 1e6),
                   st.text(max_size=8), st.sampled_from(["12abc", "3.5", "-7", ""]))


def outcome(call):
    """A call's value, or the kind of error it raised (SQLite's "%c" can split a character)."""
    try:
        return "value", call()
    except sqlite3.Error as exc:
        return "error", type(exc).__name__


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(SPECS, st.text(alphabet="ab %", max_size=3)), min_size=1,
                max_size=4),
       st.lists(VALUES, max_size=8))
def test_ordinary_formats_give_what_sqlite_gives(parts, args):
    fmt = "".join(spec + text.replace("%", "%%") for spec, text in parts)
    builtin = sqlite3.connect(":memory:")
    marks = ", ".join("?" * (1 + len(args)))
    refused: list[str] = []
    bounded = BoundedPrintf(refused)
    try:
        assert printf_width(fmt, args) <= MAX_VALUE_BYTES  # so it is formatted, not refused
        expected = outcome(lambda: builtin.execute(f"SELECT printf({marks})",
                                                   (fmt, *args)).fetchone()[0])
        assert outcome(lambda: bounded(fmt, *args)) == expected and not refused
    finally:
        bounded.close()
        builtin.close()


def test_widths_are_read_as_sqlite_reads_them():
    assert printf_width("%d %s", [1, "x"]) == 0
    assert printf_width("%*d", [40, 1]) == 40
    assert printf_width("%s %.*c", ["a", 9, "x"]) == 9  # the * after a conversion's argument
    assert printf_width("%% %*d", [7, 1]) == 7  # %% takes no argument
    assert printf_width("%-*.*f", [-5, 30, 1.0]) == 30  # a negative width is left-justified
    assert printf_width("%0*d", ["2e9", 1]) == 2_000_000_000  # text read as a number
    assert printf_width("%12345d", []) == 12345


def test_a_width_over_the_value_limit_is_refused_with_its_reason():
    refused: list[str] = []
    bounded = BoundedPrintf(refused)
    try:
        try:
            bounded("%.*c", MAX_VALUE_BYTES + 1, "x")
        except ValueError:
            pass
        assert refused and f"of {MAX_VALUE_BYTES + 1}" in refused[0]
        assert bounded("%.*c", 3, "x") == "xxx"
    finally:
        bounded.close()
