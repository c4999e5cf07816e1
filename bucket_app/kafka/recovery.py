"""Table recovery's progress: changelog records left to restore, and a log line about it.

While a worker reads its tables' changelog (when it takes over partitions, or at start-up for
what its local tables lack), Faust logs tables of offsets. :class:`RecoveryProgress` keeps the
records left per table partition (``/metrics``' ``bucket_app_recovery_remaining``) and logs one
line every few seconds: records restored of all, rate and time left. It follows both readers:
the bulk restore (:mod:`bucket_app.kafka.restore`, which reports to :meth:`restoring`) and
Faust's own recovery after it, sampled on the worker's main loop through Faust's public recovery
API (``app.tables.recovery``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RECOVERY_SAMPLE_S = 0.5
RECOVERY_LOG_EVERY_S = 5.0


@dataclass
class _Run:
    """One table's recovery under way, as first seen by a sample."""

    total: int  # records this recovery reads in all
    seen_s: float  # when first seen
    done_when_seen: int  # records already restored then
    logged_s: float


class RecoveryProgress:
    """Changelog records left to restore per partition while Faust recovers tables, and a log
    line every :data:`RECOVERY_LOG_EVERY_S` with the progress, rate and time left.

    Faust reads each assigned changelog partition from where the local table stands (or from
    the changelog's beginning) to its high watermark as of the recovery's start, and says how
    many records are left (``active_remaining``). A sample that finds some starts a run; its
    total is computed by Faust's own rule, from the table offsets noted at assignment
    (:meth:`on_assigned`, before Faust reads the changelog) and the changelog's earliest
    offsets, so a run first seen after some records were restored still counts them. The run
    ends, with one line, when none are left or Faust says recovery is over; its time and rate
    are measured from the first sample that saw it, at most :data:`RECOVERY_SAMPLE_S` late.
    Records are counted as offsets, so a compacted changelog's gaps count as records.
    """

    def __init__(self, log_every_s: float = RECOVERY_LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log_every_s = log_every_s
        self.clock = clock
        #: changelog partition -> records left to restore; replaced whole by each sample
        self.remaining: dict[int, int] = {}
        self._runs: dict[str, _Run] = {}
        # Faust's records left at the last sample, and a bulk restore's (restoring)
        self._faust_left: dict[int, int] = {}
        self._bulk_left: dict[int, int] = {}
        self._bulk_runs: dict[str, _Run] = {}
        self._table_offsets: dict[Any, int | None] = {}

    def on_assigned(self, recovery: Any) -> None:
        """Note the local table's offset of each assigned changelog partition (None: empty),
        which Faust has just put in ``active_offsets`` and reads on from."""
        self._table_offsets = dict(recovery.active_offsets)

    async def sample(self, recovery: Any, consumer: Any) -> None:
        """Sample Faust's table recovery service (``app.tables.recovery``) and log what is due
        (main loop only)."""
        try:
            in_recovery = bool(recovery.in_recovery)
            highs = {tp: high for tp, high in recovery.active_highwaters.items()
                     if high is not None}
            names = {tp: table_name(recovery, tp) for tp in highs}
            by_table: dict[str, dict[int, int]] = {}
            for tp, left in recovery.active_remaining().items():
                by_table.setdefault(names.get(tp) or table_name(recovery, tp), {})[
                    tp.partition] = max(int(left), 0)
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the worker
            log.debug("table recovery not sampled: %r", exc)
            return
        totals: dict[str, int] = {}
        if in_recovery and any(name not in self._runs and sum(left.values()) > 0
                               for name, left in by_table.items()):
            totals = await self._totals(consumer, highs, names)
        for line in self.observe(in_recovery, by_table, totals):
            log.info("%s", line)

    async def _totals(self, consumer: Any, highs: Mapping[Any, int], names: Mapping[Any, str],
                      ) -> dict[str, int]:
        """Records each table's recovery reads in all, by Faust's rule: from the later of the
        table's offset and the changelog's beginning to the high watermark (both as offsets of
        the last record read; Faust's ``Recovery._build_offsets``)."""
        try:
            earliest = await consumer.earliest_offsets(*highs)
        except Exception as exc:  # noqa: BLE001 - the total is then what is left when first seen
            log.debug("no earliest changelog offsets: %r", exc)
            return {}
        totals: dict[str, int] = {}
        for tp, high in highs.items():
            first = earliest.get(tp)
            start = -1 if first is None else first - 1
            table_offset = self._table_offsets.get(tp)
            if table_offset is not None:
                start = max(start, table_offset)
            totals[names[tp]] = totals.get(names[tp], 0) + max(high - start, 0)
        return totals

    def observe(self, in_recovery: bool, by_table: Mapping[str, Mapping[int, int]],
                totals: Mapping[str, int] | None = None) -> list[str]:
        """Take one sample: records left per table and changelog partition, and the records
        each table's recovery reads in all if known. Return the lines to log."""
        remaining: dict[int, int] = {}
        for partitions in by_table.values():
            for partition, left in partitions.items():
                remaining[partition] = remaining.get(partition, 0) + left
        self._faust_left = remaining
        self.remaining = self._merged()
        now = self.clock()
        lines = []
        for name in sorted(set(by_table) | set(self._runs)):
            left = sum(by_table.get(name, {}).values())
            run = self._runs.get(name)
            if run is not None and in_recovery and left > run.total:
                run = None  # a rebalance started another recovery, with more to read
            if run is None:
                self._runs.pop(name, None)
                if in_recovery and left > 0:
                    total = max((totals or {}).get(name, left), left)
                    run = self._runs[name] = _Run(total, now, total - left, now)
                    lines.append(f"bucket_app: recovering table {name}: {total - left:,}/"
                                 f"{total:,} records ({percent(total - left, total)})")
                continue
            line = self._step(name, run, left, now, ended=not in_recovery or left == 0)
            if line is not None:
                if not in_recovery or left == 0:
                    del self._runs[name]
                lines.append(line)
        return lines

    def _step(self, name: str, run: _Run, left: int, now: float, ended: bool) -> str | None:
        """The line a run logs now, if any: its end, or its progress when one is due."""
        done = run.total - left
        elapsed = now - run.seen_s
        rate = (done - run.done_when_seen) / elapsed if elapsed > 0 else 0.0
        if ended:
            return (f"bucket_app: recovered table {name}: {done:,} records in "
                    f"{duration(elapsed)}" + (f", {rate:,.0f}/s" if rate > 0 else ""))
        if now - run.logged_s < self.log_every_s:
            return None
        run.logged_s = now
        line = (f"bucket_app: recovering table {name}: {done:,}/{run.total:,} records "
                f"({percent(done, run.total)})")
        if rate > 0:
            line += f", {rate:,.0f}/s, ~{duration(left / rate)} left"
        return line

    def restoring(self, name: str, left: Mapping[int, int]) -> None:
        """A bulk restore of table ``name`` (:mod:`bucket_app.kafka.restore`) has ``left``
        records to read per changelog partition: the first call starts a run, one with none
        left ends it. Logs the lines :meth:`observe` logs for Faust's recovery."""
        self._bulk_left = {p: n for p, n in left.items() if n > 0}
        self.remaining = self._merged()
        total_left = sum(self._bulk_left.values())
        now = self.clock()
        run = self._bulk_runs.get(name)
        if run is None:
            if total_left == 0:
                return
            run = self._bulk_runs[name] = _Run(total_left, now, 0, now)
            log.info("%s", f"bucket_app: recovering table {name}: 0/{total_left:,} records "
                     f"({percent(0, total_left)})")
        line = self._step(name, run, total_left, now, ended=total_left == 0)
        if total_left == 0:
            del self._bulk_runs[name]
        if line is not None:
            log.info("%s", line)

    def _merged(self) -> dict[int, int]:
        merged = dict(self._faust_left)
        for partition, left in self._bulk_left.items():
            merged[partition] = merged.get(partition, 0) + left
        return merged


def table_name(recovery: Any, tp: Any) -> str:
    """The name of the table whose changelog partition ``tp`` is (its topic if unknown)."""
    return str(getattr(recovery.tp_to_table.get(tp), "name", None) or tp.topic)

def percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a whole percentage, rounded down (100% only when done)."""
    return f"{100 * part // whole}%" if whole > 0 else "100%"


def duration(seconds: float) -> str:
    """A duration for a log line: ``22 s``, ``3 min 5 s``, ``2 h 10 min``."""
    whole = max(round(seconds), 0)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
