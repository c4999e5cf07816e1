"""The native counting kernel (``native/``, Rust) behind the API the batch path uses.

:class:`NativeKernel` counts one fetched partition's raw bytes - its Kafka record batches as the
broker sent them - into window-keys. The kernel reads the batches as aiokafka's consumer does
(CRC, codecs, control batches, aborted transactions, records below the fetch offset) and counts
the records it is sure of without the interpreter lock and without a Python object per
record. Every other record, each one Python would skip included, comes back as a
:class:`FetchedRecord` and is located here by :meth:`Classifier.locate`, the one definition of
what a record means; so a :class:`FetchCount` is what locating every record would give
(tests/unit/counting/test_kernel.py checks that on generated batches of every codec, and
test_kernel_avro.py for Avro).

Values are JSON, or Avro: with the settings' schema (schemaless or Confluent-framed, as
:class:`~bucket_app.counting.decode.AvroDecoder` reads them), or with a schema registry's
writer schemas by id resolved against the reader (as
:class:`~bucket_app.counting.decode.RegistryDecoder`). The kernel runs, for each schema, a plan
:mod:`bucket_app.counting.avro_plan` compiled from it; a registry id gets its plan before the
first fetch read after the registry gave its schema, and until then its records go to Python.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from bucket_app_kernel import Kernel, Refused, unpack

from bucket_app.counting.avro_plan import UNSURE, compile_plan, slot_paths
from bucket_app.counting.buckets import MAX_TS_S
from bucket_app.counting.classify import Classifier, Grouped
from bucket_app.counting.decode import AVRO, RegistryDecoder, WriterSchema
from bucket_app.counting.keys import WindowKey, group_identity, window
from bucket_app.errors import BadInput, KernelRefused
from bucket_app.settings import Settings

__all__ = ["MAX_BATCH_BYTES", "FetchCount", "FetchedRecord", "KernelFetch", "NativeKernel"]

#: The most one compressed record batch may decompress to. A producer's batch is at most the
#: topic's max.message.bytes (1 MiB by default) compressed; a batch that claims more than this
#: is refused before it is decompressed (a decompression bomb costs at most this much memory).
MAX_BATCH_BYTES: Final = 64 * 1024 * 1024


class FetchedRecord(NamedTuple):
    """A record the kernel leaves to Python, with what counting, logging and dead letters read
    of it."""

    position: int  # among the records a consumer sees in the fetch
    offset: int
    timestamp: int  # ms
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass
class FetchCount:
    """One fetched partition counted: its window-keys, in order of first record, and its
    skipped records."""

    keys: list[WindowKey]
    counts: list[int]  # records of each key
    lasts: list[int]  # highest offset of each key
    records: int  # records the consumer sees in the fetch (the rest: markers, aborted, below)
    first_offset: int | None  # of the first of those (a replay starts at or below the progress)
    last_offset: int | None  # of the last of those
    next_offset: int  # where the partition's next fetch starts
    partial_bytes: int  # bytes at the end holding no whole batch (the broker's cut)
    min_start_s: int | None  # earliest bucket start of a counted record
    max_time_s: float | None  # latest event time of a counted record (not capped)
    located: int  # records located in Python
    skipped: list[tuple[FetchedRecord, BadInput]] = field(default_factory=list)
    #: with ``trace``: each record's index in ``keys``, or -1 when skipped
    trace: list[int] | None = None


@dataclass
class KernelFetch:
    """A fetched partition's bytes as the kernel read them, its records not yet located: what
    the seam hands the intake in place of the fetch's records (:meth:`NativeKernel.read`)."""

    data: bytes
    reading: tuple[int, list[tuple[int, int]] | None, bool, bool]  # how it was read
    max_batch_bytes: int
    groups: list[tuple[tuple[Any, ...], int, int, int]]  # (values, bucket start, count, last)
    unsure: list[FetchedRecord]  # the records left to Classifier.locate
    records: int
    first_offset: int | None
    last_offset: int | None
    next_offset: int
    partial_bytes: int
    min_start_s: int | None
    max_time_s: float | None
    trace: list[int] | None  # each record's group, -1 where left to locate
    offsets: list[int] | None  # each record's offset
    kernel_now_s: float  # the wall clock the kernel read at

    @property
    def window_keys(self) -> int:
        """The window-keys the fetch's records touch, at most (each record left to locate
        taken as one of its own)."""
        return len(self.groups) + len(self.unsure)

    def record_offsets(self) -> Sequence[int]:
        """Each record's offset, for acknowledging them: a ``range`` when they have no hole (a
        fetch read with ``offsets`` or ``offset_gaps`` has the list otherwise)."""
        if self.offsets is not None:
            return self.offsets
        first, last = self.first_offset, self.last_offset
        if first is None or last is None:
            return []
        if last - first + 1 == self.records:
            return range(first, last + 1)
        raise ValueError("this fetch was read without its offsets")

    def unpacked(self) -> list[FetchedRecord]:
        """Every record of the fetch (for the record-by-record path: a replay, retention)."""
        fetch_offset, aborted, read_committed, check_crcs = self.reading
        try:
            records, _, _ = unpack(self.data, fetch_offset, aborted=aborted,
                                   read_committed=read_committed, check_crcs=check_crcs,
                                   max_batch_bytes=self.max_batch_bytes)
        except Refused as exc:  # the same bytes were read once: not reached
            reason, offset, message = exc.args
            raise KernelRefused(reason, offset, message) from None
        return [FetchedRecord(*each) for each in records]


class NativeKernel:
    """Count fetched partitions' bytes with the kernel, under one settings' mapping."""

    def __init__(self, settings: Settings, classifier: Classifier | None = None, *,
                 max_batch_bytes: int = MAX_BATCH_BYTES, reader: dict[str, Any] | None = None,
                 writers: Mapping[int, WriterSchema] | None = None) -> None:
        """Values are JSON, or Avro with ``settings.avro_schema``. With a schema registry,
        ``writers`` holds the writer schemas by id (filled as the registry answers; each new one
        is compiled into a plan before the next fetch is read) and ``reader`` is the schema
        they resolve to (None: values are JSON); ``classifier`` then decodes as they do."""
        columns = list(settings.msg_map)
        self._paths = slot_paths(columns, settings.bucket_field)
        self._reader = reader if writers is not None else settings.avro_schema
        self._writers = writers if self._reader is not None else None
        self._planned: set[int] = set()
        plain = None
        if self._reader is not None:  # Avro: a plan, or one that leaves every value to Python
            plain = compile_plan(self._reader, None, self._paths) or [UNSURE]
        self._kernel = Kernel(columns, settings.bucket_field,
                              settings.bucket_type, settings.bucket_interval_s,
                              float(settings.max_future_skew_s), max_batch_bytes,
                              avro=plain, registry=self._writers is not None)
        if classifier is None:
            classifier = Classifier(settings, decoder=None if writers is None
                                    else RegistryDecoder(reader, writers))
        self._classifier = classifier
        #: whether values are read as Avro (else JSON)
        self.reads_avro = self._reader is not None
        self._interval_s = settings.bucket_interval_s
        self._max_batch_bytes = max_batch_bytes

    def read(self, data: bytes, fetch_offset: int, now_s: float, *,
             aborted: list[tuple[int, int]] | None = None, read_committed: bool = False,
             check_crcs: bool = True, trace: bool = False, offsets: bool = False,
             offset_gaps: bool = False) -> KernelFetch:
        """Read ``data`` (a fetch response's record bytes for one partition, fetched from
        ``fetch_offset``; ``aborted``: the response's aborted transactions as (producer id,
        first offset)) and count what the kernel is sure of at ``now_s``. Raises
        :class:`KernelRefused` for a fetch the kernel does not read, as aiokafka would raise for
        most of them. Needs no interpreter lock for the reading, so any thread may call it."""
        if self._writers is not None and len(self._writers) != len(self._planned):
            self._plan_writers()
        try:
            (groups, unsure, records, first, last, next_offset, partial, min_start, max_time,
             native_trace, native_offsets) = self._kernel.count(
                data, fetch_offset, now_s, aborted=aborted, read_committed=read_committed,
                check_crcs=check_crcs, trace=trace, offsets=offsets, offset_gaps=offset_gaps)
        except Refused as exc:
            reason, offset, message = exc.args
            raise KernelRefused(reason, offset, message) from None
        return KernelFetch(
            data=data, reading=(fetch_offset, aborted, read_committed, check_crcs),
            max_batch_bytes=self._max_batch_bytes, groups=groups,
            unsure=[FetchedRecord(*each) for each in unsure], records=records,
            first_offset=first, last_offset=last, next_offset=next_offset,
            partial_bytes=partial, min_start_s=min_start, max_time_s=max_time,
            trace=native_trace, offsets=native_offsets, kernel_now_s=now_s)

    def _plan_writers(self) -> None:
        """Hand the kernel a plan for each writer schema id it has none for (None: its values
        go to Python, as those of an id not fetched yet do)."""
        assert self._writers is not None
        for schema_id, writer in list(self._writers.items()):
            if schema_id in self._planned:
                continue
            plan = None
            if writer.kind == AVRO and writer.schema is not None:
                plan = compile_plan(writer.schema, self._reader, self._paths)
            self._kernel.add_writer(schema_id, plan)
            self._planned.add(schema_id)

    def count(self, data: bytes, partition: int, fetch_offset: int, now_s: float, *,
              aborted: list[tuple[int, int]] | None = None, read_committed: bool = False,
              check_crcs: bool = True, trace: bool = False) -> FetchCount:
        """:meth:`read` and :meth:`locate`: the count of a fetch, every record located."""
        return self.locate(self.read(data, fetch_offset, now_s, aborted=aborted,
                                     read_committed=read_committed, check_crcs=check_crcs,
                                     trace=trace), partition, now_s)

    def locate(self, fetch: KernelFetch, partition: int, now_s: float) -> FetchCount:
        """The count of a fetch the kernel read: its groups as window-keys of ``partition``,
        and each record it left located by :meth:`Classifier.locate` at ``now_s``.

        ``now_s`` must not be before the clock the kernel read at (it is later on one wall
        clock): the kernel counts no record past ``kernel_now_s + max_future_skew``, and leaves
        the rest to ``locate``, so its answers are those ``locate`` gives at any later time."""
        interval = self._interval_s
        groups = fetch.groups
        keys: list[WindowKey] = [((partition, *values), window(start, interval))
                                 for values, start, _, _ in groups]
        result = FetchCount(
            keys=keys, counts=[count for _, _, count, _ in groups],
            lasts=[highest for _, _, _, highest in groups], records=fetch.records,
            first_offset=fetch.first_offset, last_offset=fetch.last_offset,
            next_offset=fetch.next_offset, partial_bytes=fetch.partial_bytes,
            min_start_s=fetch.min_start_s, max_time_s=fetch.max_time_s,
            located=len(fetch.unsure),
            trace=None if fetch.trace is None else list(fetch.trace))
        if fetch.unsure:
            self._locate(result, fetch.unsure, partition, now_s)
        return result

    def grouped(self, fetch: KernelFetch, partition: int, now_s: float,
                ) -> tuple[Grouped, list[tuple[FetchedRecord, BadInput]]]:
        """A fetch the kernel read, located at ``now_s``, as :meth:`Classifier.group` answers
        for a batch (what ``Counter.add_grouped`` takes), and its skipped records. Read
        without ``trace`` and ``offsets``, it is read again with them if a replay needs them."""
        found = self.locate(fetch, partition, now_s)
        if fetch.first_offset is None:
            raise ValueError("grouped() needs a fetch with records")
        counted = found.min_start_s is not None and found.max_time_s is not None
        trace, offsets, again = found.trace, fetch.offsets, None
        if trace is None or offsets is None:  # not kept: read again if a replay needs them
            trace, offsets = [], []
            again = functools.partial(self._trace, fetch, partition, now_s, found.keys)
        return Grouped(
            keys=found.keys, counts=found.counts, lasts=found.lasts,
            # as Classifier.group: the earliest start, the latest time capped at the clock
            min_start_s=int(found.min_start_s if found.min_start_s is not None else MAX_TS_S),
            max_time_s=(float(min(found.max_time_s, now_s))
                        if found.max_time_s is not None and counted else float("-inf")),
            first_offset=fetch.first_offset, _groups=trace, _offsets=offsets, _trace=again,
        ), found.skipped

    def _trace(self, fetch: KernelFetch, partition: int, now_s: float,
               keys: list[WindowKey]) -> tuple[list[int], list[int]]:
        """Each record's index in ``keys`` (-1: not counted) and its offset, for a fetch read
        without them: read again with them (the rare replay that needs them). Indexes are
        mapped by key, so a writer schema planned in between changes nothing."""
        fetch_offset, aborted, read_committed, check_crcs = fetch.reading
        again = self.read(fetch.data, fetch_offset, fetch.kernel_now_s, aborted=aborted,
                          read_committed=read_committed, check_crcs=check_crcs, trace=True,
                          offsets=True)
        found = self.locate(again, partition, now_s)
        assert found.trace is not None and again.offsets is not None
        where = {group_identity(key): at for at, key in enumerate(keys)}
        ours = [where[group_identity(key)] for key in found.keys]
        return [-1 if at < 0 else ours[at] for at in found.trace], list(again.offsets)

    def _locate(self, result: FetchCount, records: list[FetchedRecord], partition: int,
                now_s: float) -> None:
        """Add what :meth:`Classifier.locate` says of each record the kernel left to Python."""
        where: dict[Any, int] = {group_identity(key): at for at, key in enumerate(result.keys)}
        locate = self._classifier.locate
        for record in records:
            try:
                key, start, ts = locate(record.value, partition, record.timestamp / 1000.0, now_s)
            except BadInput as exc:
                result.skipped.append((record, exc))
                if result.trace is not None:
                    result.trace[record.position] = -1
                continue
            at = where.setdefault(group_identity(key), len(result.keys))
            if at == len(result.keys):
                result.keys.append(key)
                result.counts.append(0)
                result.lasts.append(record.offset)
            result.counts[at] += 1
            result.lasts[at] = max(result.lasts[at], record.offset)
            result.min_start_s = start if result.min_start_s is None else min(
                result.min_start_s, start)
            result.max_time_s = ts if result.max_time_s is None else max(result.max_time_s, ts)
            if result.trace is not None:
                result.trace[record.position] = at
