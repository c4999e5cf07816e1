"""User SQL as text: the tokenizer, identifier quoting and the statement check.

:func:`check_statement` refuses, with a friendly 400, what is not one complete query starting
with SELECT, WITH, VALUES or EXPLAIN; it only explains, and the sandbox's authorizer
(:mod:`bucket_app.sql.sandbox`) enforces. :func:`quote_table_name` quotes the configured table
name where it stands bare in a table position: the old Flask service documented
``SELECT * FROM default`` for a table literally named ``default``, an SQLite keyword. The
snapshot and the web views quote their own identifiers with :func:`quote_identifier`.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from bucket_app.errors import HttpError

__all__ = ["SQLITE_KEYWORDS", "check_statement", "quote_identifier", "quote_table_name"]

# The 147 keywords of SQLite 3.40 (sqlite3_keyword_name); any of them as a bare table
# name may be a syntax error, so a table named like one must be quoted.
SQLITE_KEYWORDS: frozenset[str] = frozenset(
    """
    ABORT ACTION ADD AFTER ALL ALTER ALWAYS ANALYZE AND AS ASC ATTACH AUTOINCREMENT BEFORE
    BEGIN BETWEEN BY CASCADE CASE CAST CHECK COLLATE COLUMN COMMIT CONFLICT CONSTRAINT
    CREATE CROSS CURRENT CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP DATABASE DEFAULT
    DEFERRABLE DEFERRED DELETE DESC DETACH DISTINCT DO DROP EACH ELSE END ESCAPE EXCEPT
    EXCLUDE EXCLUSIVE EXISTS EXPLAIN FAIL FILTER FIRST FOLLOWING FOR FOREIGN FROM FULL
    GENERATED GLOB GROUP GROUPS HAVING IF IGNORE IMMEDIATE IN INDEX INDEXED INITIALLY INNER
    INSERT INSTEAD INTERSECT INTO IS ISNULL JOIN KEY LAST LEFT LIKE LIMIT MATCH MATERIALIZED
    NATURAL NO NOT NOTHING NOTNULL NULL NULLS OF OFFSET ON OR ORDER OTHERS OUTER OVER
    PARTITION PLAN PRAGMA PRECEDING PRIMARY QUERY RAISE RANGE RECURSIVE REFERENCES REGEXP
    REINDEX RELEASE RENAME REPLACE RESTRICT RETURNING RIGHT ROLLBACK ROW ROWS SAVEPOINT
    SELECT SET TABLE TEMP TEMPORARY THEN TIES TO TRANSACTION TRIGGER UNBOUNDED UNION UNIQUE
    UPDATE USING VACUUM VALUES VIEW VIRTUAL WHEN WHERE WINDOW WITH WITHOUT
    """.split()
)

_ALLOWED_FIRST_WORDS = frozenset({"SELECT", "WITH", "VALUES", "EXPLAIN"})

_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# One alternative per token kind. Unterminated strings, identifiers and block comments run
# to the end of the text so a stray quote never makes us misread what follows it.
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>'(?:[^']|'')*(?:'|\Z))
  | (?P<qident>"(?:[^"]|"")*(?:"|\Z)|`(?:[^`]|``)*(?:`|\Z)|\[[^\]]*(?:\]|\Z))
  | (?P<param>\?[0-9]*|[:@$][A-Za-z0-9_$\x80-\U0010ffff]+)
  | (?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)
  | (?P<number>[0-9][A-Za-z0-9_.]*)
  | (?P<semicolon>;)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# Keywords that close a FROM list at the same parenthesis depth. ON and USING do not:
# ``FROM a JOIN b ON a.x = b.x, c`` continues the list after the ON expression.
_FROM_LIST_ENDS = frozenset(
    "WHERE GROUP HAVING WINDOW ORDER LIMIT UNION EXCEPT INTERSECT RETURNING SELECT VALUES".split()
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    start: int

    @property
    def significant(self) -> bool:
        return self.kind not in ("ws", "comment")

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


def _tokenize(sql: str) -> list[_Token]:
    tokens = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        assert kind is not None  # every alternative is a named group
        tokens.append(_Token(kind, match.group(), match.start()))
    return tokens


def quote_identifier(name: str) -> str:
    """Return ``name`` as an SQLite identifier in double quotes, inner quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def _needs_quoting(name: str) -> bool:
    return _PLAIN_IDENTIFIER.match(name) is None or name.upper() in SQLITE_KEYWORDS


def quote_table_name(sql: str, table: str) -> str:
    """Quote the bare name ``table`` wherever it stands in a table position of ``sql``.

    Table positions are right after FROM, after JOIN (every join form ends in JOIN) and
    after a comma of a FROM list. The name is compared case-insensitively, as SQLite does;
    strings, quoted identifiers and comments are left alone, and so is everything when
    ``table`` is a plain identifier that is not a keyword, because then it needs no quotes.
    A name that is not one word (``my-table``) is matched as a run of adjacent tokens.
    """
    if not table or not _needs_quoting(table):
        return sql
    tokens = _tokenize(sql)
    wanted = table.casefold()
    replacements: list[tuple[int, int]] = []
    # One "inside a FROM list" flag per parenthesis depth, so a subquery's FROM list
    # neither starts nor ends the outer one.
    in_from = [False]
    # The last two significant tokens, each with whether it stood in a table position.
    previous: tuple[_Token, bool] | None = None
    before_previous: tuple[_Token, bool] | None = None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.significant:
            index += 1
            continue
        table_position = _is_table_position(previous, before_previous, in_from[-1])
        if table_position and token.kind in ("word", "number", "punct"):
            end = _match_run(sql, tokens, index, wanted)
            if end is not None:
                replacements.append((token.start, tokens[end].start + len(tokens[end].text)))
                index = end
                token = tokens[end]
        if token.kind == "punct" and token.text == "(":
            in_from.append(False)
        elif token.kind == "punct" and token.text == ")":
            if len(in_from) > 1:
                in_from.pop()
        elif token.is_word("FROM", "JOIN"):
            in_from[-1] = True
        elif token.is_word(*_FROM_LIST_ENDS) or token.kind == "semicolon":
            in_from[-1] = False
        before_previous, previous = previous, (token, table_position)
        index += 1
    for start, end in reversed(replacements):
        sql = sql[:start] + quote_identifier(sql[start:end]) + sql[end:]
    return sql


def _is_table_position(
    previous: tuple[_Token, bool] | None,
    before_previous: tuple[_Token, bool] | None,
    in_from_list: bool,
) -> bool:
    if previous is None:
        return False
    token = previous[0]
    if token.is_word("FROM"):
        # ``a IS NOT DISTINCT FROM b`` compares values; b is no table.
        return before_previous is None or not before_previous[0].is_word("DISTINCT")
    if token.is_word("JOIN"):
        return True
    if token.kind == "punct" and token.text == ",":
        return in_from_list
    # ``FROM main.default``: the table follows a schema name that stood in table position.
    return (
        token.kind == "punct" and token.text == "." and bool(before_previous and before_previous[1])
    )


def _match_run(sql: str, tokens: list[_Token], index: int, wanted: str) -> int | None:
    """Index of the last token of a run spelling ``wanted`` from ``tokens[index]``, if any.

    The run must be adjacent word/number/punct tokens covering the name exactly, so
    ``default`` matches in ``FROM default WHERE`` but not in ``FROM defaults``.
    """
    start = tokens[index].start
    for end in range(index, len(tokens)):
        token = tokens[end]
        if token.kind not in ("word", "number", "punct"):
            return None
        text = sql[start : token.start + len(token.text)].casefold()
        if text == wanted:
            return end
        if not wanted.startswith(text):
            return None
    return None


def check_statement(sql: str) -> None:
    """Raise :class:`HttpError` 400 unless ``sql`` is one complete read-only-looking query.

    This check is for friendly messages only; the authorizer is what enforces read-only.
    """
    if "\x00" in sql:  # sqlite3 refuses it with a ValueError no layer below expects
        raise HttpError(400, "the query contains a NUL character", sql=sql)
    tokens = _tokenize(sql)
    statements: list[list[_Token]] = [[]]
    for token in tokens:
        if token.kind == "semicolon":
            statements.append([])
        elif token.significant:
            statements[-1].append(token)
    statements = [statement for statement in statements if statement]
    if not statements:
        raise HttpError(400, "the query is empty", sql=sql)
    # A newline first, so a trailing -- comment cannot swallow the semicolon we add.
    if not sqlite3.complete_statement(sql + "\n;"):
        raise HttpError(
            400,
            "the query is incomplete: an unterminated string, quoted name or comment?",
            sql=sql,
        )
    if len(statements) > 1:
        raise HttpError(400, "only one statement is allowed per query", sql=sql)
    first = statements[0][0]
    if not first.is_word(*_ALLOWED_FIRST_WORDS):
        raise HttpError(
            400,
            f"only SELECT, WITH, VALUES or EXPLAIN queries are allowed, not {first.text!r}",
            sql=sql,
        )
