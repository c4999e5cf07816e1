"""Query-time rollups: stored buckets re-bucketed into coarser granules of a zone's local time.

``GET /api/v1/buckets?granularity=1d&tz=Europe/Berlin`` (:mod:`bucket_app.web.api`) asks for
this. A granule of ``granularity_s`` seconds begins at every instant at which the zone's wall
clock reaches a multiple of ``granularity_s`` counted from 1970-01-01 00:00 local time, or jumps
past one: 1h and 1d granules begin on the local hour and at local midnight, a DST gap that skips
a boundary begins the granule at the transition, and a fall-back that repeats a boundary begins
a granule at each of its two occurrences. So on DST days a 1d granule is 23 or 25 hours long,
and with 1h granules the repeated hour of a fall-back is two rows. Granularities that do not
divide a day are aligned the same way (7d granules begin on Thursdays, as 1970-01-01 did).

Stored buckets are ``[start, start + bucket_interval)`` with starts on multiples of the interval,
so a rollup is exact only if every granule edge is a bucket edge; one that is not (1h granules
in a +05:30 zone over 1h buckets) is refused rather than approximated.

Where it runs: the rows are in the SQLite snapshot, read by sandboxed child processes
(:mod:`bucket_app.sql.pool`), and a rolled-up answer must stay within the row limit, so the
grouping has to happen in SQLite. A local-time granule is no fixed modulo of epoch seconds, but
between two of the zone's transitions the UTC offset is constant and the edges are arithmetic.
:class:`Granules` finds the transitions in the queried range (probing :mod:`zoneinfo`), keeps
one :class:`Stretch` per constant offset with the edges in force where it begins and ends, and
turns that into two CASE expressions over bound parameters (:meth:`Granules.sql_start`,
:meth:`Granules.sql_end`) with one branch per stretch: a handful per year. The same stretches
answer :meth:`Granules.start_of` and :meth:`Granules.end_of` in Python, which the tests hold
to a brute-force reading of the definition above.
"""

from __future__ import annotations

import bisect
import math
import re
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bucket_app.errors import HttpError, InvalidValue
from bucket_app.settings import parse_duration_s
from bucket_app.sql.sandbox import quote_identifier
from bucket_app.web.declare import Invalid

__all__ = [
    "MAX_GRANULARITY_S",
    "Granules",
    "Rollup",
    "Stretch",
    "parse_granularity",
    "parse_group_by",
    "parse_rollup",
    "parse_zone",
    "rollup_sql",
]

# How often the zone's UTC offset is sampled to find its transitions. Two transitions closer
# than this that restore the earlier offset would go unseen; tzdata has none.
PROBE_S = 6 * 3600
# Stretches begin this far before the first queried bucket (besides two granules), so the
# granule in force at the first bucket is known even when it began before a transition.
PAD_S = 2 * 86_400
# A granule longer than a leap year is no local-time calendar unit this module can align.
MAX_GRANULARITY_S = 366 * 86_400
# Ranges longer than this take too many probes (one per PROBE_S) to answer promptly.
MAX_SPAN_S = 200 * 366 * 86_400
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*\Z")
_MAX_ZONE_KEY = 64


@dataclass(frozen=True, slots=True)
class Rollup:
    """What a request asked to roll up to: granule length, zone, columns kept."""

    granularity_s: int
    zone: zoneinfo.ZoneInfo
    group_by: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {"granularity_s": self.granularity_s, "tz": self.zone.key,
                "group_by": list(self.group_by)}


def parse_granularity(raw: str, interval_s: int) -> int:
    """``5m``, ``1h``, ``1d``, ``90`` (seconds): a whole multiple of ``interval_s``, or Invalid."""
    try:
        seconds = parse_duration_s(raw, bare_unit_s=1)
    except InvalidValue as exc:
        raise Invalid(f"granularity: {exc}", value=raw[:200]) from None
    if not math.isfinite(seconds) or seconds > MAX_GRANULARITY_S:
        raise Invalid(f"granularity must be at most {MAX_GRANULARITY_S // 86_400}d",
                      value=raw[:200])
    if seconds < interval_s:
        raise Invalid(f"granularity {raw} is finer than bucket_interval ({interval_s} s): "
                      "buckets are stored at that size and cannot be split",
                      value=raw[:200], bucket_interval_s=interval_s)
    if seconds != int(seconds) or int(seconds) % interval_s:
        raise Invalid(f"granularity {raw} ({seconds:g} s) is not a multiple of "
                      f"bucket_interval ({interval_s} s): a granule must hold whole buckets",
                      value=raw[:200], bucket_interval_s=interval_s)
    return int(seconds)


def parse_zone(raw: str) -> zoneinfo.ZoneInfo:
    """An IANA time zone name (``Europe/Berlin``, ``UTC``), or Invalid."""
    if len(raw) > _MAX_ZONE_KEY or not _ZONE_KEY.match(raw):
        raise Invalid("tz must be an IANA time zone name such as Europe/Berlin or UTC",
                      value=raw[:200])
    try:
        return zoneinfo.ZoneInfo(raw)
    except (ValueError, OSError, KeyError):
        # KeyError: ZoneInfoNotFoundError; OSError: a directory such as "Europe";
        # ValueError: a file under the zoneinfo tree that is no zone (zone.tab)
        raise Invalid(f"unknown time zone {raw!r}; tz must be an IANA time zone name "
                      "such as Europe/Berlin or UTC", value=raw[:200]) from None


def parse_group_by(values: Sequence[str], columns: Sequence[str]) -> tuple[str, ...]:
    """``group_by=a,b`` (or repeated): mapped columns, in the order given, each once."""
    chosen: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name not in columns:
                raise Invalid(f"group_by names {name!r}, which is not a mapped column",
                              value=value[:200], columns=list(columns))
            if name not in chosen:
                chosen.append(name)
    return tuple(chosen)


def parse_rollup(granularity_s: int | None, zone: zoneinfo.ZoneInfo | None,
                 group_by: Sequence[tuple[str, ...]] | None, interval_s: int,
                 columns: Sequence[str]) -> Rollup | None:
    """The rollup a request asks for (its parsed parameters), None when it names none of the
    three.

    ``granularity`` defaults to the bucket interval, ``tz`` to UTC, ``group_by`` to every
    mapped column; ``group_by=`` (empty) keeps none, one total per granule.
    """
    if granularity_s is None and zone is None and group_by is None:
        return None
    chosen = tuple(columns) if group_by is None else tuple(dict.fromkeys(
        name for names in group_by for name in names))
    return Rollup(granularity_s=interval_s if granularity_s is None else granularity_s,
                  zone=parse_zone("UTC") if zone is None else zone, group_by=chosen)


def utc_offset_s(zone: zoneinfo.ZoneInfo, t: int) -> int:
    offset = datetime.fromtimestamp(t, zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return int(offset.total_seconds())


def transitions(zone: zoneinfo.ZoneInfo, lo: int, hi: int) -> list[tuple[int, int]]:
    """(instant, offset from then on) for ``lo`` and every offset change in ``(lo, hi]``."""
    found = [(lo, utc_offset_s(zone, lo))]
    at, offset = found[0]
    while at < hi:
        probe = min(at + PROBE_S, hi)
        if utc_offset_s(zone, probe) == offset:
            at = probe
            continue
        # The first second with another offset lies in (at, probe].
        before, after = at, probe
        while after - before > 1:
            middle = (before + after) // 2
            if utc_offset_s(zone, middle) == offset:
                before = middle
            else:
                after = middle
        at, offset = after, utc_offset_s(zone, after)
        found.append((at, offset))
    return found


@dataclass(slots=True)
class Stretch:
    """Instants from ``start`` to the next stretch's start, all at one UTC offset.

    ``opens``: ``start`` is itself a granule edge. ``anchor``: the last edge at or before
    ``start`` (None for the first stretch, whose start is no transition). ``follow``: the first
    edge at or after the next stretch's start (None for the last stretch).
    """

    start: int
    offset_s: int
    opens: bool
    anchor: int | None = None
    follow: int | None = None


class Granules:
    """The granules of ``granularity_s`` in ``zone`` around the buckets ``lo`` .. ``hi``.

    Exact for every instant in ``[lo - granularity_s, hi + granularity_s]``; the stretches
    reach further so that the granules in force at both ends are known.
    """

    def __init__(self, zone: zoneinfo.ZoneInfo, granularity_s: int, lo: int, hi: int) -> None:
        if hi < lo:
            raise ValueError(f"empty range {lo} .. {hi}")
        self.zone = zone
        self.granularity_s = g = granularity_s
        if hi - lo + 4 * (g + PAD_S) > MAX_SPAN_S:
            raise HttpError(400, f"the buckets to roll up span more than "
                            f"{MAX_SPAN_S // (366 * 86_400)} years; narrow them with from and to")
        try:
            changes = transitions(zone, lo - 2 * g - PAD_S, hi + 2 * g + PAD_S)
        except (OverflowError, ValueError, OSError):
            raise HttpError(400, "the buckets to roll up lie outside the years zoneinfo "
                            "can convert; narrow them with from and to") from None
        self.stretches = [Stretch(changes[0][0], changes[0][1], opens=False)]
        for (start, offset), (_, before) in zip(changes[1:], changes, strict=False):
            # A boundary on the new wall clock, or one a forward jump skips, opens a granule.
            skipped = offset > before and (start + before - 1) // g < (start + offset) // g
            self.stretches.append(Stretch(start, offset, (start + offset) % g == 0 or skipped))
        self.starts = [s.start for s in self.stretches]
        for index, stretch in enumerate(self.stretches):
            if index:
                stretch.anchor = self.start_of(stretch.start)
            if index + 1 < len(self.stretches):
                stretch.follow = self._first_edge_from(index + 1)

    def _index(self, t: int) -> int:
        return max(bisect.bisect_right(self.starts, t) - 1, 0)

    def _regular(self, index: int, t: int) -> int:
        """The last instant at or before ``t`` whose wall clock, at this stretch's offset,
        reads a multiple of the granularity."""
        return t - (t + self.stretches[index].offset_s) % self.granularity_s

    def start_of(self, t: int) -> int:
        """The edge of the granule holding instant ``t``: the last edge at or before it."""
        while True:
            index = self._index(t)
            stretch = self.stretches[index]
            candidate = self._regular(index, t)
            if candidate >= stretch.start or index == 0:
                return candidate
            if stretch.opens:
                return stretch.start
            t = stretch.start - 1

    def _first_edge_from(self, index: int) -> int:
        """The first edge at or after the start of stretch ``index``."""
        while True:
            stretch = self.stretches[index]
            if stretch.opens:
                return stretch.start
            candidate = stretch.start + (-(stretch.start + stretch.offset_s)) % self.granularity_s
            if index + 1 == len(self.stretches) or candidate < self.starts[index + 1]:
                return candidate
            index += 1

    def end_of(self, t: int) -> int:
        """The end of the granule holding instant ``t``: the first edge after it."""
        index = self._index(t)
        candidate = self._regular(index, t) + self.granularity_s
        if index + 1 == len(self.stretches) or candidate < self.starts[index + 1]:
            return candidate
        return self._first_edge_from(index + 1)

    def used(self, lo: int, hi: int) -> list[int]:
        """Indexes of the stretches that hold an instant of ``[lo, hi]``."""
        return list(range(self._index(lo), self._index(hi) + 1))

    def check_aligned(self, lo: int, end: int, interval_s: int) -> None:
        """Raise 400 unless every granule edge in ``[lo, end]`` is a bucket edge.

        Within a stretch the regular edges are ``granularity_s`` apart, a multiple of the
        interval, so the first of them stands for all.
        """
        for index in self.used(lo, end):
            stretch = self.stretches[index]
            first = max(stretch.start, lo)
            last = min(self.starts[index + 1] - 1, end) if index + 1 < len(
                self.stretches) else end
            edges = [stretch.start] if stretch.opens and lo <= stretch.start <= end else []
            regular = first + (-(first + stretch.offset_s)) % self.granularity_s
            if regular <= last:
                edges.append(regular)
            misaligned = [edge for edge in edges if edge % interval_s]
            if misaligned:
                when = datetime.fromtimestamp(misaligned[0], UTC).isoformat()
                offset = timedelta(seconds=stretch.offset_s)
                raise HttpError(
                    400, f"granules of {self.granularity_s} s in {self.zone.key} begin at "
                    f"{when} (UTC offset {offset}), inside a stored bucket of {interval_s} s: "
                    "a rollup needs granule edges on bucket edges",
                    granularity_s=self.granularity_s, tz=self.zone.key,
                    bucket_interval_s=interval_s)

    def sql_start(self, column: str, lo: int, hi: int, params: dict[str, Any]) -> str:
        """SQL for the granule edge of instant ``column`` (a bucket start in ``[lo, hi]``)."""
        return self._case(column, lo, hi, params, self._sql_start_branch)

    def sql_end(self, column: str, lo: int, hi: int, params: dict[str, Any]) -> str:
        """SQL for the end of the granule whose edge is ``column`` (in ``[lo, hi]``)."""
        return self._case(column, lo, hi, params, self._sql_end_branch)

    def _case(self, column: str, lo: int, hi: int, params: dict[str, Any],
              branch: Callable[[str, int, dict[str, Any]], str]) -> str:
        """The stretch of ``column`` found by bisection (nested CASEs), so a row costs
        log(stretches) comparisons however long the range; then that stretch's ``branch``."""
        params["rg"] = self.granularity_s

        def lookup(indexes: list[int]) -> str:
            if len(indexes) == 1:
                return branch(column, indexes[0], params)
            middle = indexes[len(indexes) // 2]
            params[f"rs{middle}"] = self.stretches[middle].start
            return (f"(CASE WHEN {column} >= :rs{middle} "
                    f"THEN {lookup(indexes[len(indexes) // 2:])} "
                    f"ELSE {lookup(indexes[:len(indexes) // 2])} END)")

        return lookup(self.used(lo, hi))

    def _sql_start_branch(self, column: str, index: int, params: dict[str, Any]) -> str:
        stretch = self.stretches[index]
        params[f"ro{index}"] = stretch.offset_s
        regular = f"({column} - (({column} + :ro{index}) % :rg + :rg) % :rg)"
        if stretch.anchor is None:
            return regular
        params[f"rs{index}"] = stretch.start
        params[f"ra{index}"] = stretch.anchor
        return f"(CASE WHEN {regular} >= :rs{index} THEN {regular} ELSE :ra{index} END)"

    def _sql_end_branch(self, column: str, index: int, params: dict[str, Any]) -> str:
        stretch = self.stretches[index]
        params[f"ro{index}"] = stretch.offset_s
        regular = f"({column} + :rg - (({column} + :ro{index}) % :rg + :rg) % :rg)"
        if stretch.follow is None:
            return regular
        params[f"rn{index}"] = self.starts[index + 1]
        params[f"rf{index}"] = stretch.follow
        return f"(CASE WHEN {regular} < :rn{index} THEN {regular} ELSE :rf{index} END)"


def rollup_sql(table: str, rollup: Rollup, granules: Granules, lo: int, hi: int,
               where: Sequence[str], params: dict[str, Any], limit: int) -> str:
    """One statement: the stored buckets with starts in ``[lo, hi]`` that match ``where``,
    summed per granule and ``group_by`` columns, ordered by granule, at most ``limit`` rows.

    ``lo`` should be a granule edge and ``hi`` the last second of a granule, so that every
    granule answered is whole. ``params`` receives the statement's own parameters (named
    ``r...``); ``where`` may use others already in it, and names the table's columns.

    The granule end is computed outside the aggregate: both levels have a LIMIT, which keeps
    SQLite from flattening them into one, where the end's expression would repeat the start's
    at each of its references to it.
    """
    names = [quote_identifier(c) for c in rollup.group_by]
    columns = "".join(f"{c}, " for c in names)
    params["rlo"], params["rhi"], params["rlimit"] = lo, hi, limit
    start = granules.sql_start("bucket_start", lo, hi, params)
    end = granules.sql_end("bucket_start", lo, hi, params)
    conditions = " AND ".join(["bucket_start >= :rlo", "bucket_start <= :rhi", *where])
    order = ", ".join(["bucket_start", *names])
    stored = (f"SELECT {columns}CAST(bucket_start AS INTEGER) AS bucket_start, \"count\", late, "
              f"final FROM {quote_identifier(table)} WHERE {conditions}")
    granuled = (f"SELECT {columns}{start} AS bucket_start, \"count\", late, final "
                f"FROM ({stored})")
    summed = (f"SELECT {columns}bucket_start, sum(\"count\") AS \"count\", "
              "coalesce(sum(late), 0) AS late, min(coalesce(final, 0)) AS final "
              f"FROM ({granuled}) GROUP BY {order} ORDER BY {order} LIMIT :rlimit")
    return (f"SELECT {columns}bucket_start, {end} AS bucket_end, \"count\", late, final "
            f"FROM ({summed}) ORDER BY {order} LIMIT :rlimit")
