"""aiokafka's fetching, bent for the source topic: fetch sizes, isolation, a batch at a time.

All act on one aiokafka consumer (the one Faust's consumer thread of a bucket_app app creates,
see :mod:`bucket_app.seam.consumer`), never on aiokafka's classes: :func:`tune_fetches` sets the
consumer's fetch sizes and :func:`read_isolated` its isolation level before it starts,
:func:`bulk_source_records` hooks its fetcher once it has started. A fetch that escapes the
hook (none should) is handed over by aiokafka's own ``getall`` as ConsumerRecords, which the
counting code reads the same way, only slower.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from itertools import chain, islice
from types import MethodType
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition

from bucket_app.errors import BucketAppError

# Records moved per C loop while a record batch is decoded: a C loop holds the interpreter
# lock throughout, so a thousand records at a time.
DECODE_CHUNK = 1000


def tune_fetches(consumer: AIOKafkaConsumer, min_bytes: int, max_wait_ms: int,
                 max_bytes: int) -> None:
    """Make the broker batch ``consumer``'s fetches: answer once ``min_bytes`` are there for
    the fetch, or after ``max_wait_ms``, with at most ``max_bytes``. Call before it starts.

    Faust builds its consumer with ``fetch_max_wait_ms=1500`` (a literal, not a setting) and
    aiokafka's ``fetch_min_bytes=1`` and ``fetch_max_bytes`` of 50 MiB; aiokafka reads these
    three when ``start`` builds the consumer's fetcher. Why these values: see
    ``bucket_app.worker.FETCH_MIN_BYTES``.
    """
    consumer._fetch_min_bytes = min_bytes
    consumer._fetch_max_wait_ms = max_wait_ms
    consumer._fetch_max_bytes = max_bytes


def read_isolated(consumer: AIOKafkaConsumer, isolation_level: str) -> None:
    """Make ``consumer`` read ``read_committed`` or ``read_uncommitted``. Call before it starts.

    Faust builds its worker consumer with ``read_uncommitted`` unless the app is exactly-once
    (a literal choice, not a setting); aiokafka hands the consumer's level to its fetcher in
    ``start``, and the fetcher to each fetch request and to its record unpacking.
    """
    consumer._isolation_level = isolation_level


#: source partition -> the fetch position a drained fetch reached past its last record
Positions = dict[Any, int]

#: Reads one fetched partition's record bytes natively: ``(bytes, fetch offset, aborted
#: transactions as (producer id, first offset), read_committed, check_crcs)`` in; out an object
#: with ``next_offset``, ``first_offset`` and ``last_offset`` (None without records),
#: ``records`` and ``window_keys`` (how many it touched, at most) that the intake hands to the
#: counting in place of the records. Raises a BucketAppError for a fetch it does not read,
#: which aiokafka then reads.
NativeReader = Callable[[bytes, int, list[tuple[int, int]], bool, bool], Any]
#: The size of the consumer's next fetch (``fetch.max.bytes``), after a fetch read natively:
#: ``(records, window_keys, records left behind it up to the high watermark)`` in
#: (bucket_app.kafka.fetchsize).
FetchSizer = Callable[[int, int, int], int]


def bulk_source_records(consumer: AIOKafkaConsumer, topic: str,
                        native: NativeReader | None = None,
                        sizer: FetchSizer | None = None) -> Positions:
    """Let ``consumer`` (started) hand over ``topic``'s records a Kafka record batch at a time,
    as it decoded them.

    aiokafka unpacks a fetch through a generator that yields one record at a time, each built
    into a ConsumerRecord (eleven fields, a headers tuple, two ``len`` calls) and appended to
    the result one by one; the counting code reads three fields of each. For ``topic`` each
    fetch result this consumer's fetcher stores gets :func:`getall_batches` as its own
    ``getall`` (once per fetched partition, not per record), which extends its result with
    each record batch's decoded records (offset, timestamp, key, value, headers) at once. The
    batch checks are aiokafka's own (CRC, aborted transactions, control batches, records below
    the fetch offset), and so is the fetch position after a batch. Other topics are unchanged.

    ``topic``'s records are only taken whole: the worker fetches with
    ``broker_max_poll_records`` unset, and nothing calls ``getone``.

    Returns the positions (:data:`Positions`) of partitions whose fetch moved past offsets
    that carry no record to hand over: transaction markers and aborted transactions' records.
    aiokafka drops a fetch that has no records left to return, so only this says that the
    partition has been read that far. The caller takes them (:func:`take_positions`).

    With ``native``, a fetch of ``topic`` whose record bytes the consumer's client received
    (:func:`keep_fetched_bytes`) is read by ``native`` instead, and handed over as the one
    object it returns; a fetch it refuses is unpacked by aiokafka as above. With ``sizer`` too,
    each fetch ``native`` read sets the size of the fetcher's next fetches (the fetcher reads
    ``_fetch_max_bytes`` for each fetch request it builds, on this same thread).
    """
    fetcher = consumer._fetcher
    if fetcher is None:
        raise RuntimeError("bulk_source_records needs a started consumer")

    seen = None
    if sizer is not None:
        def seen(records: int, window_keys: int, behind: int) -> None:
            fetcher._fetch_max_bytes = sizer(records, window_keys, behind)

    hooked = SourceFetches(topic, native, seen)
    hooked.update(fetcher._records)
    fetcher._records = hooked
    if native is not None:
        keep_fetched_bytes(consumer, hooked)
    return hooked.positions


def keep_fetched_bytes(consumer: AIOKafkaConsumer, fetches: SourceFetches) -> None:
    """Have ``consumer``'s client keep, in ``fetches.raw``, the record bytes and aborted
    transactions of each fetch response for the source topic.

    aiokafka's compiled MemoryRecords, which its fetcher builds from those bytes, does not give
    them back. The client is the consumer's own (its fetcher sends through it); its ``send``
    is wrapped on this one object, for every request, and only looks at fetch responses.
    """
    client = consumer._client
    send = client.send

    async def send_keeping_fetches(node_id: int, request: Any, *args: Any,
                                   **kwargs: Any) -> Any:
        response = await send(node_id, request, *args, **kwargs)
        if isinstance(request, FetchRequest) and response is not None:
            fetches.keep(request, response)
        return response

    client.send = send_keeping_fetches


def take_positions(positions: Positions) -> Positions:
    """Take (and remove) every position ``positions`` holds. aiokafka's fetcher thread adds to
    it only while a fetch is being drained, never while the drained fetch is counted."""
    return {tp: positions.pop(tp) for tp in list(positions)}


class SourceFetches(OrderedDict):  # type: ignore[type-arg]
    """A fetcher's fetched results by partition; those of ``topic`` are read a batch at a time.

    aiokafka's fetcher stores each fetch result with ``self._records[tp] = FetchResult(...)``
    and reads it back with ``type(result) is FetchResult``, so the result keeps its class and
    gets a ``getall`` of its own.
    """

    def __init__(self, topic: str, native: NativeReader | None = None,
                 seen: Callable[[int, int, int], None] | None = None) -> None:
        super().__init__()
        self.topic = topic
        self.positions: Positions = {}
        self.native = native
        #: told (records, window-keys, records behind) of each fetch read natively
        self.seen = seen
        #: the source partitions' last fetched record bytes: (fetch offset, bytes, aborted,
        #: the partition's high watermark)
        self.raw: dict[Any, tuple[int, bytes, list[tuple[int, int]], int]] = {}

    def __setitem__(self, tp: Any, result: Any) -> None:
        if tp.topic == self.topic and type(result) is FetchResult:
            # like aiokafka's own record iterator, this method refers back to its result; it
            # drops itself once the result is drained (getall_batches)
            result.getall = MethodType(  # type: ignore[method-assign]
                partial(getall_batches, positions=self.positions, fetches=self), result)
            records = result._partition_records
            if records is not None:
                # aiokafka's per-record generator, not started, is never used
                records._records_iterator = None
        super().__setitem__(tp, result)

    def keep(self, request: Any, response: Any) -> None:
        """Keep the source topic's record bytes of a fetch response (see keep_fetched_bytes);
        the layout is the one aiokafka's fetcher reads (``Fetcher._proc_fetch_request``)."""
        asked = {partition: offset for topic, partitions in request.topics
                 if topic == self.topic for partition, offset, *_ in partitions}
        if not asked:
            return
        version = response.API_VERSION
        for topic, partitions in response.topics:
            if topic != self.topic:
                continue
            for partition, error_code, highwater, *data in partitions:
                offset = asked.get(partition)
                if error_code or offset is None or not data:
                    continue
                aborted = data[2] if version >= 11 else data[-2] if version >= 4 else None
                self.raw[TopicPartition(topic, partition)] = (
                    offset, data[-1], [(int(pid), int(first)) for pid, first in aborted or []],
                    highwater)

    def read_natively(self, tp: Any, partition: PartitionRecords) -> Any:
        """The native reading of ``tp``'s fetch, when its bytes were kept and it reads them;
        else None (aiokafka unpacks it)."""
        raw = self.raw.pop(tp, None)
        if self.native is None or raw is None:
            return None
        offset, data, aborted, highwater = raw
        if offset != partition.next_fetch_offset or not isinstance(data, bytes):
            return None  # not this result's fetch
        try:
            read = self.native(data, offset, aborted,
                               partition._isolation_level == READ_COMMITTED,
                               partition._check_crcs)
        except BucketAppError:  # refused: aiokafka reads it, and raises where it raises
            return None
        if self.seen is not None:
            self.seen(read.records, read.window_keys, max(highwater - read.next_offset, 0))
        return read


def getall_batches(result: FetchResult, max_records: int | None = None, *,
                   positions: Positions | None = None,
                   fetches: SourceFetches | None = None) -> list[Any]:
    """aiokafka's ``FetchResult.getall`` for one fetched partition, its records unpacked a
    record batch at a time by :func:`unpack_batches` (or the fetch read natively, handed over
    as one object: see bulk_source_records); a position past the last record goes to
    ``positions``."""
    vars(result).pop("getall", None)  # no cycle through this method once it has run
    if max_records is not None:
        raise RuntimeError("the source topic's records are fetched whole "
                           f"(max_records={max_records})")
    tp = result._topic_partition
    if not result.check_assignment(tp) or not result.has_more():
        return []
    fetched: list[Any] = []
    partition = result._partition_records
    native = None if fetches is None else fetches.read_natively(tp, partition)
    if native is not None:
        partition.next_fetch_offset = native.next_offset
        last = native.last_offset
        if last is not None:
            fetched.append(native)
    else:
        for decoded in unpack_batches(partition):
            fetched.extend(decoded)
        last = fetched[-1].offset if fetched else None
    result._update_position()
    result._partition_records = None
    reached = partition.next_fetch_offset
    if positions is not None and (last is None or reached > last + 1):
        positions[tp] = reached
    return fetched


def unpack_batches(partition: PartitionRecords) -> Iterator[list[Any]]:
    """aiokafka's ``PartitionRecords._unpack_records``, yielding each record batch's decoded
    records as one list instead of one ConsumerRecord at a time."""
    records = partition._records
    while records.has_next():
        batch = records.next_batch()
        if partition._check_crcs and not batch.validate_crc():
            raise CorruptRecordException(f"Invalid CRC - {partition._tp}")
        if partition._isolation_level == READ_COMMITTED and batch.producer_id is not None:
            partition._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and partition._contains_abort_marker(batch):
                partition._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in partition._aborted_producers:
                partition.next_fetch_offset = batch.next_offset
                continue
        if batch.is_control_batch:
            partition.next_fetch_offset = batch.next_offset
            continue
        decoded = []
        # chain: aiokafka's batch raises if asked for a record after its last one
        unread = chain(batch)
        while chunk := list(islice(unread, DECODE_CHUNK)):
            decoded.extend(chunk)
        if decoded and decoded[0].offset < partition.next_fetch_offset:
            start = partition.next_fetch_offset
            decoded = [record for record in decoded if record.offset >= start]
        if decoded:
            partition.next_fetch_offset = decoded[-1].offset + 1
            yield decoded
        partition.next_fetch_offset = batch.next_offset
