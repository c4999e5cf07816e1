"""The parameters routes share, their parsers, and the one filter builder of row routes.

Parsers raise :class:`~bucket_app.web.declare.Invalid`; :func:`~bucket_app.web.declare.parse_args`
turns that into the 400. :func:`row_filters` builds the SQL conditions of ``column=value``,
``from`` and ``to`` for both /api/v1/buckets and /api/v1/stream, from the arguments that
:func:`filter_params` declares.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from bucket_app.counting.buckets import parse_epoch, parse_iso
from bucket_app.errors import BadInput
from bucket_app.sql.sandbox import quote_identifier
from bucket_app.web.declare import Args, Invalid, Param, Schema
from bucket_app.web.formats import FORMATS

DEFAULT_WAIT_MS = 2_000
MAX_WAIT_MS = 30_000
MIN_OFFSETS_HEADER = "X-Min-Offsets"
WAIT_MS_HEADER = "X-Wait-Ms"
TIME_TEXT = "epoch seconds (`1700000000`, `1700000000.5`) or ISO-8601 (`2026-11-28T10:00:00Z`)"
#: the argument key of a ``column=value`` filter: a column may be named like an option
FILTER = "={}"


def parse_time(name: str) -> Callable[[str], float]:
    """A query-string time: epoch seconds or ISO-8601."""
    def parse(raw: str) -> float:
        try:
            return parse_epoch(raw)
        except BadInput:
            pass
        try:
            return parse_iso(raw)
        except BadInput:
            raise Invalid(f"{name} must be epoch seconds or ISO-8601", value=raw) from None

    return parse


def parse_limit(raw: str) -> int:
    try:
        limit = int(raw)
    except ValueError:
        raise Invalid("limit must be a whole number", value=raw) from None
    if limit <= 0:
        raise Invalid("limit must be greater than 0", value=raw)
    return limit


def parse_flag(name: str) -> Callable[[str], int]:
    """``true``/``false`` (or ``1``/``0``) as SQLite's 1/0."""
    def parse(value: str) -> int:
        flag = {"true": 1, "1": 1, "false": 0, "0": 0}.get(value.strip().lower())
        if flag is None:
            raise Invalid(f"{name} must be true or false, not {value!r}")
        return flag

    return parse


def encode_token(position: Mapping[int, int]) -> str:
    """An opaque position token: the reflected offset of every partition, in order."""
    offsets = [position[p] for p in sorted(position)]
    return base64.urlsafe_b64encode(orjson.dumps(offsets)).rstrip(b"=").decode()


def parse_min_offsets(partitions: int) -> Callable[[str], dict[int, int]]:
    """``p:offset,p:offset`` or a token from an earlier answer -> {partition: offset}."""
    def parse(raw: str) -> dict[int, int]:
        text = raw.strip()
        try:
            if ":" in text:
                wanted = {}
                for part in text.split(","):
                    partition, offset = part.split(":")
                    wanted[int(partition)] = int(offset)
            else:
                padded = text + "=" * (-len(text) % 4)
                offsets = orjson.loads(base64.urlsafe_b64decode(padded))
                if not isinstance(offsets, list) or not all(
                        isinstance(o, int) for o in offsets):
                    raise ValueError("not a token")
                wanted = dict(enumerate(offsets))
        except (ValueError, orjson.JSONDecodeError):
            raise Invalid("min_offsets must be p:offset[,p:offset...] or a token "
                          "from an earlier answer", value=raw[:200]) from None
        bad = [p for p in wanted if not 0 <= p < partitions]
        if bad:
            raise Invalid(f"no partition {bad[0]}; the topic has {partitions}", value=raw)
        return wanted

    return parse


def parse_wait_ms(raw: str) -> int:
    try:
        wait_ms = int(raw)
    except ValueError:
        raise Invalid("wait_ms must be a whole number of milliseconds", value=raw) from None
    if not 0 <= wait_ms <= MAX_WAIT_MS:
        raise Invalid(f"wait_ms must be between 0 and {MAX_WAIT_MS}", value=raw)
    return wait_ms


def parse_format(requested: str) -> str:
    name = requested.strip().lower()
    if name not in FORMATS:
        raise Invalid(f"unknown format {requested[:50]!r}; use json, csv or ndjson",
                      value=requested[:200], formats=list(FORMATS))
    return name


FORMAT = Param("format", "answer format; without it the Accept header decides "
               "(application/json, text/csv, application/x-ndjson), JSON by default",
               {"type": "string", "enum": list(FORMATS)}, parse_format)
# an empty value counts as absent (the header twin, then the default, decides)
WAIT_MS_SCHEMA: Schema = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS},
                                    {"const": ""}], "default": DEFAULT_WAIT_MS}


def freshness_headers(partitions: int) -> tuple[Param, ...]:
    """X-Min-Offsets and X-Wait-Ms, which every SQL route reads (after their query twins)."""
    return (
        Param(MIN_OFFSETS_HEADER, "min_offsets as a header (the query parameter wins)",
              parse=parse_min_offsets(partitions), where="header", key="min_offsets",
              blank_absent=True),
        Param(WAIT_MS_HEADER, "wait_ms as a header (the query parameter wins)",
              WAIT_MS_SCHEMA, parse_wait_ms, where="header", key="wait_ms",
              blank_absent=True))


def freshness(partitions: int) -> tuple[Param, ...]:
    """min_offsets and wait_ms, query parameter first, then the header twin."""
    return (
        Param("min_offsets", "answer only from a snapshot reflecting these source offsets: "
              "a position token or `p:offset[,p:offset...]`",
              parse=parse_min_offsets(partitions), blank_absent=True),
        Param("wait_ms", "how long to wait for min_offsets before 503 (empty: as if absent)",
              WAIT_MS_SCHEMA, parse_wait_ms, blank_absent=True),
        *freshness_headers(partitions))


def nullable(raw: str) -> str | None:
    return None if raw == "" else raw


def filter_params(columns: Iterable[str], flags: Iterable[str] = ()) -> tuple[Param, ...]:
    """``from``, ``to`` and one filter per column (``flags``: true/false ones), any number of
    each; :func:`row_filters` reads them."""
    found = [Param("from", f"buckets ending after this: {TIME_TEXT}", parse=parse_time("from"),
                   many=True),
             Param("to", f"buckets starting before this: {TIME_TEXT}", parse=parse_time("to"),
                   many=True)]
    found += [Param(c, f"rows whose {c} equals this (empty: NULL)", parse=nullable,
                    key=FILTER.format(c), many=True) for c in columns]
    found += [Param(c, f"only buckets that are {c} (true) or not (false)",
                    {"type": "string", "enum": ["true", "false"]}, parse_flag(c),
                    key=FILTER.format(c), many=True) for c in flags]
    return tuple(found)


@dataclass(frozen=True, slots=True)
class RowFilters:
    """SQL conditions with named parameters: ``columns`` on column values (parameters
    ``params``), ``times`` for from/to, stored buckets overlapping ``[from, to)``
    (parameters ``time_params``)."""

    columns: list[str] = field(default_factory=list)
    times: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    time_params: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        conditions = self.columns + self.times
        return " WHERE " + " AND ".join(conditions) if conditions else ""


def row_filters(args: Args) -> RowFilters:
    """The conditions of the filters :func:`filter_params` declared, as parsed in ``args``."""
    filters = RowFilters()
    for key, values in args.items():
        if key in ("from", "to"):
            bound = "bucket_end >" if key == "from" else "bucket_start <"
            for value in values:
                name = f"f{len(filters.params) + len(filters.time_params)}"
                filters.times.append(f"{bound} :{name}")
                filters.time_params[name] = value
        elif key.startswith(FILTER.format("")):
            column = quote_identifier(key[1:])
            for value in values:
                name = f"f{len(filters.params) + len(filters.time_params)}"
                filters.columns.append(f"{column} IS :{name}" if value is None else
                                       f"{column} = :{name}")
                filters.params[name] = value
    return filters
