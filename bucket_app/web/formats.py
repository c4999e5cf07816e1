"""Answer formats of the row routes: JSON (the default), CSV and NDJSON.

:func:`negotiate` picks the format from ``?format=json|csv|ndjson`` or, without it, from the
Accept header (``text/csv``, ``application/x-ndjson``); :func:`respond` answers in it. The row
routes (:mod:`bucket_app.web.seed`, :mod:`bucket_app.web.api`) call both, negotiating before
they run any SQL, so a format nobody serves costs no query. Errors are not this module's
business: they stay JSON, raised as :class:`~bucket_app.errors.HttpError` before any byte of an
answer is sent.

CSV and NDJSON carry the rows alone (no envelope): one header line of column names then one
line per row (RFC 4180, CRLF, NULL as an empty field), or one JSON object per row. Both are
streamed in chunks, so a large answer is never built as one body; the rows themselves are
bounded by the same row limit as JSON, since they come from the same query. A truncated
answer says so in ``X-Truncated: true`` as always, and NDJSON adds a last line
``{"truncated": true, "rows": <rows before it>}``. CSV has no marker line: any line would be
read as a data row by every CSV reader, so the header is its only marker.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web as aioweb

from bucket_app.errors import HttpError
from bucket_app.sql.pool import EncodedResult
from bucket_app.sql.sandbox import json_default

__all__ = ["FORMATS", "negotiate", "respond"]

#: format name -> Content-Type of its answers
FORMATS = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8; header=present",
    "ndjson": "application/x-ndjson",
}
# media types a client may name in Accept, by the format they select
_MEDIA_TYPES = {
    "application/json": "json",
    "text/csv": "csv",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
}
# Rows per write: large enough that writes stay few, small enough to start sending early.
CHUNK_ROWS = 1000


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return 0.0
            return quality if 0.0 <= quality <= 1.0 else 0.0
    return 1.0


def from_accept(accept: str) -> str | None:
    """The format an Accept header prefers, None if it accepts none of them.

    Each format takes the quality of the most specific range that matches it (exact type,
    then ``type/*``, then ``*/*``); the highest quality wins, and JSON wins ties, so a
    browser's ``*/*`` or a bare ``text/*`` alongside ``application/json`` gets JSON.
    """
    best: dict[str, tuple[int, float]] = {}  # format -> (specificity, quality)
    for item in accept.split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if not media:
            continue
        kind, _, subtype = media.partition("/")
        quality = _quality(params)
        for exact, name in _MEDIA_TYPES.items():
            exact_kind = exact.partition("/")[0]
            if media == exact:
                specificity = 3
            elif subtype == "*" and kind == exact_kind:
                specificity = 2
            elif media == "*/*" or media == "*":
                specificity = 1
            else:
                continue
            if specificity > best.get(name, (0, 0.0))[0] or (
                    specificity == best[name][0] and quality > best[name][1]):
                best[name] = (specificity, quality)
    ranked = [(quality, -list(FORMATS).index(name), name)
              for name, (_, quality) in best.items() if quality > 0]
    return max(ranked)[2] if ranked else None


def negotiate(accept: str | None, requested: str | None = None) -> str:
    """``json``, ``csv`` or ``ndjson``: ``requested`` (the ``format`` query parameter, already
    parsed by :func:`bucket_app.web.params.parse_format`) if given, else what ``accept``
    prefers; JSON without either. An Accept header that accepts none of them is 406."""
    if requested is not None:
        return requested
    if accept is None or not accept.strip():
        return "json"
    chosen = from_accept(accept)
    if chosen is None:
        raise HttpError(406, "this route answers application/json, text/csv or "
                        "application/x-ndjson; the Accept header allows none of them",
                        accept=accept[:200], formats=list(FORMATS))
    return chosen


def decode_rows(result: EncodedResult) -> list[dict[str, Any]]:
    """The result's rows as Python objects (the pool hands them over as JSON already)."""
    rows: list[dict[str, Any]] = orjson.loads(orjson.dumps(result.rows))
    return rows


def columns_of(result: EncodedResult) -> list[str]:
    """The result's columns as its JSON rows have them: a repeated name once, where it first
    stands (the rows keep the last value under it)."""
    return list(dict.fromkeys(result.columns))


def csv_chunks(columns: list[str], rows: list[dict[str, Any]]) -> Iterable[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for start in range(0, len(rows), CHUNK_ROWS):
        writer.writerows([["" if row.get(c) is None else row[c] for c in columns]
                          for row in rows[start:start + CHUNK_ROWS]])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # no rows: the header alone
        yield buffer.getvalue().encode()


def ndjson_chunks(rows: list[dict[str, Any]], truncated: bool) -> Iterable[bytes]:
    for start in range(0, len(rows), CHUNK_ROWS):
        yield b"".join(orjson.dumps(row, default=json_default) + b"\n"
                       for row in rows[start:start + CHUNK_ROWS])
    if truncated:
        yield orjson.dumps({"truncated": True, "rows": len(rows)}) + b"\n"


async def respond(request: Any, fmt: str, result: EncodedResult, json_body: Any,
                  headers: Mapping[str, str]) -> aioweb.StreamResponse:
    """Answer ``json_body`` as JSON, or ``result``'s rows streamed as CSV or NDJSON."""
    headers = {**headers, "Vary": "Accept"}
    if fmt == "json":
        return aioweb.Response(body=orjson.dumps(json_body, default=json_default),
                               content_type=FORMATS["json"], headers=headers)
    rows = decode_rows(result)
    chunks = csv_chunks(columns_of(result), rows) if fmt == "csv" else ndjson_chunks(
        rows, result.truncated)
    response = aioweb.StreamResponse(headers={**headers, "Content-Type": FORMATS[fmt]})
    await response.prepare(request)
    # A client that leaves mid-answer ends it; there is nobody left to tell.
    with contextlib.suppress(ConnectionResetError):
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    return response
