"""Bucket arithmetic, event-time parsing and field mapping for one decoded message.

Sits between :mod:`bucket_app.counting.decode` (which yields a ``dict`` per Kafka message) and the
agent (which counts ``(bucket_start, *group_values)`` in its windowed table). Everything here
is pure and runs once per message, so the work of reading settings - splitting dotted
paths, choosing the time parser - is done once when a :class:`FieldMap` or
:class:`TimeField` is built. Buckets are half-open, ``[start, start + interval_s)``, and
aligned to the Unix epoch, hence to the UTC day whenever ``interval_s`` divides 86400. Every
time is epoch seconds as a float; a time we cannot read raises
:class:`~bucket_app.errors.TimeError` with a ``reason`` label (``bad_time``,
``missing_time``) for the agent to count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from bucket_app.counting.decode import preview
from bucket_app.errors import BadInput, TimeError
from bucket_app.schema import split_path

__all__ = [
    "MAX_TS_S",
    "MIN_TS_S",
    "FieldMap",
    "TimeField",
    "TimeParser",
    "bucket_start",
    "make_time_parser",
    "parse_epoch",
    "parse_iso",
]

TimeParser = Callable[[Any], float]

# The range of datetime (years 1..9999): any accepted time can be shown as an ISO string,
# and epoch milliseconds sent by mistake (year ~47000) are refused rather than counted.
MIN_TS_S: Final = -62135596800.0  # 0001-01-01T00:00:00Z
MAX_TS_S: Final = 253402300799.999999  # 9999-12-31T23:59:59.999999Z

_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE: Final = datetime(1970, 1, 1)

# Group values must be hashable and fit a SQLite column; these do not, so they become JSON.
_COMPOUND: Final = (dict, list)
_JSON_OPTS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS

MISSING: Final = object()  # "no such key", where None is a value

def bucket_start(ts_s: float, interval_s: int) -> int:
    """Start of the half-open bucket ``[start, start + interval_s)`` that holds ``ts_s``.

    Floors towards minus infinity, so negative and fractional times land in the bucket that
    contains them (``-1`` is in ``[-20, 0)`` for 20 s buckets). ``interval_s`` must be a
    positive int; settings validates that once rather than here per message.
    """
    # `//` floors towards minus infinity (int() alone would truncate negatives towards 0)
    # and, for floats, is computed from fmod so it never rounds across a boundary.
    return int(ts_s // interval_s) * interval_s


def _check_range(ts_s: float, value: Any) -> float:
    # One comparison also rejects NaN (all comparisons false) and +/-inf.
    if MIN_TS_S <= ts_s <= MAX_TS_S:
        return float(ts_s)
    raise TimeError(f"time out of range or not finite: {preview(value)}", reason="bad_time")


def _datetime_s(dt: datetime, value: Any) -> float:
    # A time without a zone is UTC by our contract, never the host's local time.
    if dt.tzinfo is None:
        ts_s = (dt - _EPOCH_NAIVE).total_seconds()
    else:
        ts_s = (dt - _EPOCH_UTC).total_seconds()
    return _check_range(ts_s, value)


def parse_epoch(value: Any) -> float:
    """Epoch seconds from an int, a float or a numeric string such as ``"1440179085.5"``.

    ``bool`` is refused although it is an int subclass: ``true`` in a message is no time.
    A ``datetime`` (what fastavro yields for Avro ``timestamp-*`` logical types) is also
    accepted, naive ones as UTC. NaN, infinities and times outside :data:`MIN_TS_S` ..
    :data:`MAX_TS_S` raise ``TimeError(reason="bad_time")``.
    """
    cls = value.__class__
    # Exact-type test first: the common case, and it lets bool (an int subclass) through
    # to the refusal below instead of being read as 0 or 1.
    if cls is int or cls is float:
        return _check_range(value, value)
    if isinstance(value, str):
        # float() also takes Python's "1_000" spelling, which no producer means as a time.
        if "_" not in value:
            try:
                return _check_range(float(value), value)
            except ValueError:
                pass
        raise TimeError(f"not an epoch time: {preview(value)}", reason="bad_time")
    if isinstance(value, datetime):
        return _datetime_s(value, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _check_range(value, value)
    raise TimeError(
        f"not an epoch time ({type(value).__name__}): {preview(value)}", reason="bad_time"
    )


def _lenient_iso(value: str) -> datetime:
    """Second try for spellings fromisoformat refuses: surrounding blanks, 't' and 'z'."""
    text = value.strip()
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    if text[10:11] == "t":
        text = text[:10] + "T" + text[11:]
    if text != value:
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    raise TimeError(f"not an ISO-8601 time: {preview(value)}", reason="bad_time")


def parse_iso(value: Any) -> float:
    """Epoch seconds from an ISO-8601 string; a time without a zone is UTC.

    Takes what ``datetime.fromisoformat`` takes on Python 3.11 - ``Z``, ``+02:00``,
    ``-0530``, ``+05``, any number of fractional digits (truncated to microseconds), a space
    for ``T``, a bare date (midnight UTC) - plus lowercase ``t``/``z`` and surrounding blanks.
    A ``datetime`` object is accepted as is. Anything else raises
    ``TimeError(reason="bad_time")``.
    """
    if value.__class__ is not str:
        if isinstance(value, datetime):
            return _datetime_s(value, value)
        if not isinstance(value, str):
            raise TimeError(
                f"not an ISO-8601 time ({type(value).__name__}): {preview(value)}",
                reason="bad_time",
            )
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        dt = _lenient_iso(value)
    return _datetime_s(dt, value)


_TIME_PARSERS: Final[dict[str, TimeParser]] = {"epoch": parse_epoch, "iso": parse_iso}


def make_time_parser(bucket_type: str) -> TimeParser:
    """The parser for a ``bucket_type`` setting: ``"epoch"`` or ``"iso"``.

    Raises a plain ``ValueError`` for anything else; settings wraps it.
    """
    try:
        return _TIME_PARSERS[bucket_type]
    except KeyError:
        raise ValueError(
            f"bucket_type must be one of {sorted(_TIME_PARSERS)}, not {bucket_type!r}"
        ) from None


def lookup(msg: dict[str, Any], path: str, parts: tuple[str, ...] | None) -> Any:
    """The value at ``path`` in ``msg``, or ``None`` when any step is missing or not a dict.

    A literal top-level key that contains dots wins over the nested reading of the path.
    """
    if parts is None:
        return msg.get(path)
    value = msg.get(path, MISSING)
    if value is not MISSING:
        return value
    node: Any = msg
    for part in parts:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


class FieldMap:
    """Pull the group columns out of a message, in the order of the ``msg_map_schema``.

    Built from ``{message field path: column name}``, e.g.
    ``{"origin_server": "server_name", "meta.host": "host"}``. :meth:`extract` returns one
    value per column; a missing field, or a path through a non-dict, gives ``None``.
    A dict or list value is rendered as compact JSON text with sorted keys
    (``{"b":1,"a":2}`` -> ``'{"a":2,"b":1}'``): it could be neither a hashable group key
    nor a SQLite value, and sorting keys makes equal objects fall in one group. Values
    orjson cannot encode inside it (bytes, Decimal) are written as ``str(value)``; one it
    cannot render at all (nested over 254 levels) raises ``BadInput(reason="bad_field")``.
    """

    __slots__ = ("columns", "paths", "_fields")

    def __init__(self, msg_map_schema: Mapping[str, str]) -> None:
        columns: list[str] = []
        for path, column in msg_map_schema.items():
            if not isinstance(column, str) or not column:
                raise ValueError(f"column name for {path!r} must be a non-empty string")
            if column in columns:
                raise ValueError(f"column name {column!r} is mapped twice")
            columns.append(column)
        self.columns: tuple[str, ...] = tuple(columns)
        self.paths: tuple[str, ...] = tuple(msg_map_schema)
        self._fields: tuple[tuple[str, tuple[str, ...] | None], ...] = tuple(
            (path, split_path(path)) for path in self.paths
        )

    def __repr__(self) -> str:
        pairs = ", ".join(f"{p!r}: {c!r}" for p, c in zip(self.paths, self.columns, strict=True))
        return f"FieldMap({{{pairs}}})"

    def extract(self, msg: dict[str, Any]) -> tuple[Any, ...]:
        """The mapped values of ``msg`` in column order (``None`` where missing)."""
        out = []
        for path, parts in self._fields:
            # Inlined plain-key case of lookup: it is the common one and this runs per message.
            value = msg.get(path) if parts is None else lookup(msg, path, parts)
            if isinstance(value, _COMPOUND):
                try:
                    value = orjson.dumps(value, default=str, option=_JSON_OPTS).decode()
                except orjson.JSONEncodeError as exc:  # nested over 254 levels, say
                    raise BadInput(f"field {path!r} cannot be a group value: {exc}",
                                   reason="bad_field") from None
            out.append(value)
        return tuple(out)


def _event_time(
    msg: dict[str, Any],
    path: str,
    parts: tuple[str, ...] | None,
    parse: TimeParser,
    fallback_ts_s: float | None,
) -> float:
    value = lookup(msg, path, parts)
    if value is None:
        if fallback_ts_s is None:
            raise TimeError(f"time field {path!r} is missing", reason="missing_time")
        # The record time is the producer's to set (CreateTime, any int64 of ms): the same
        # range as a time in the message, so every counted time can be shown as ISO-8601.
        return _check_range(float(fallback_ts_s), fallback_ts_s)
    return parse(value)


class TimeField:
    """The bucket field of a message: its path and ``bucket_type``, resolved once."""

    __slots__ = ("path", "bucket_type", "parse", "_parts")

    def __init__(self, path: str, bucket_type: str) -> None:
        self._parts = split_path(path)
        self.path = path
        self.bucket_type = bucket_type
        self.parse: TimeParser = make_time_parser(bucket_type)

    def __repr__(self) -> str:
        return f"TimeField({self.path!r}, {self.bucket_type!r})"

    def get(self, msg: dict[str, Any], fallback_ts_s: float | None = None) -> float:
        """Event time of ``msg`` in epoch seconds.

        A missing or ``None`` field falls back to ``fallback_ts_s`` (the Kafka record time in
        seconds) when given, else raises ``TimeError(reason="missing_time")``. A present but
        unreadable value raises ``bad_time``; it never falls back, so bad producers show up.
        """
        return _event_time(msg, self.path, self._parts, self.parse, fallback_ts_s)
