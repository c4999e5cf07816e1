"""The one table of private library names the seam uses, and the start-up check against it.

Every private name of faust, mode, aiokafka or aiohttp that a module of :mod:`bucket_app.seam`
calls, reads, sets or overrides is a row of :data:`PRIVATE_NAMES`: its owner (a class or a
module), what kind of name it is, and why the seam needs it. :func:`check` runs at the start of
``create_app``: the installed faust-streaming and aiokafka must be the pinned versions, every
name must be there, and a method must take the parameters it took when the seam was written.
Anything else stops start-up with one line naming what differs
(:class:`~bucket_app.errors.IncompatibleLibrary`). ``tests/unit/test_seam_contract.py`` checks
each row on its own, and ``docs/design.md`` lists them (checked against this table).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from importlib import metadata
from types import CodeType, ModuleType

import faust
import faust.streams
from aiohttp.web_runner import BaseRunner
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.fetcher import Fetcher, FetchResult, PartitionRecords
from aiokafka.producer.message_accumulator import MessageAccumulator
from faust.stores.rocksdb import Store
from faust.tables.base import Collection
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.web.drivers.aiohttp import Web
from mode import Service

from bucket_app.errors import IncompatibleLibrary

#: The versions the seam was written against (setup.cfg and requirements.lock pin the same).
PINNED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

METHOD = "method"  # a function on the owner class: present, with these parameter names
ATTRIBUTE = "attribute"  # an instance attribute: the owner's code sets or reads it
OBJECT = "object"  # a module-level object


@dataclass(frozen=True)
class PrivateName:
    """A private name the seam relies on."""

    owner: type | ModuleType
    name: str
    kind: str
    why: str
    params: tuple[str, ...] = ()  # METHOD only: inspect.signature's parameter names

    @property
    def where(self) -> str:
        """``module.Class.name`` (or ``module.name``), as in the docs."""
        if isinstance(self.owner, ModuleType):
            return f"{self.owner.__name__}.{self.name}"
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"


def _method(owner: type, name: str, params: tuple[str, ...], why: str) -> PrivateName:
    return PrivateName(owner, name, METHOD, why, params)


def _attribute(owner: type, name: str, why: str) -> PrivateName:
    return PrivateName(owner, name, ATTRIBUTE, why)


_AIOKAFKA_THREAD = faust_aiokafka.AIOKafkaConsumerThread
_INTAKE = "consumer.SeamConsumer, for bucket_app.kafka.intake: "

#: Every private name the seam uses. Keep in step with the seam's modules (each row names the
#: module) and with docs/design.md "Library internals".
PRIVATE_NAMES: tuple[PrivateName, ...] = (
    # --- faust: the app picks the seam's transport and sees its consumer (seam.app)
    _method(faust.App, "_new_transport", ("self",),
            "app: the app's transport is SeamTransport, whose consumer is SeamConsumer"),
    _method(faust.App, "_new_consumer", ("self",),
            "app: the new consumer is handed to SeamApp.on_consumer (the batch intake)"),
    # --- faust: consumer and its thread (seam.consumer)
    _method(faust_aiokafka.Consumer, "_new_consumer_thread", ("self",),
            "consumer: the consumer's thread is SeamConsumerThread"),
    _method(_AIOKAFKA_THREAD, "_create_worker_consumer", ("self", "transport"),
            "thread: fetch sizes set on the aiokafka consumer before it starts"),
    _method(_AIOKAFKA_THREAD, "_ensure_consumer", ("self",),
            "thread: the thread's aiokafka consumer (seek to beginning, fetcher hook)"),
    _method(FaustConsumer, "_drain_messages", ("self", "fetcher"),
            "consumer: Faust's fetch loop, which the batch intake replaces"),
    _method(FaustConsumer, "_wait_next_records", ("self", "timeout"),
            _INTAKE + "a fetch, awaited the way Faust's fetch loop does"),
    _method(faust_aiokafka.Consumer, "_to_message", ("self", "tp", "record"),
            _INTAKE + "Faust's message for a record (the batch's current event)"),
    _method(FaustConsumer, "_add_gap", ("self", "tp", "offset_from", "offset_to"),
            _INTAKE + "a gap in another topic's offsets, as Faust's fetch loop records it"),
    _method(FaustConsumer, "_get_active_partitions", ("self",),
            _INTAKE + "partitions assigned and not paused"),
    _attribute(FaustConsumer, "_buffered_partitions", _INTAKE + "partitions Faust buffers"),
    _attribute(FaustConsumer, "_paused_partitions", _INTAKE + "paused partitions (/health)"),
    _attribute(FaustConsumer, "_read_offset", _INTAKE + "records below it are dropped"),
    _method(FaustConsumer, "_new_offset", ("self", "tp"),
            _INTAKE + "the offset to commit, found without a Python step per offset"),
    _attribute(FaustConsumer, "_committed_offset", _INTAKE + "acks below it are dropped"),
    _attribute(FaustConsumer, "_acked", _INTAKE + "acknowledged offsets, as Consumer.ack"),
    _attribute(FaustConsumer, "_acked_index", _INTAKE + "acknowledged offsets (set)"),
    _attribute(FaustConsumer, "_gap", _INTAKE + "offsets that never arrive, for commits"),
    _attribute(FaustConsumer, "_n_acked", _INTAKE + "acks since the last commit"),
    _attribute(FaustConsumer, "_commit_every", _INTAKE + "broker_commit_every"),
    _attribute(FaustConsumer, "_unacked_messages",
               _INTAKE + "a batch stays unacknowledged until its changelog is written"),
    _attribute(FaustConsumer, "_waiting_for_ack", _INTAKE + "woken when a batch is released"),
    _attribute(Service, "_stopped", _INTAKE + "the fetch loop's stop condition, as Faust's"),
    _method(faust_aiokafka.Consumer, "_commit", ("self", "offsets"),
            "consumer: what the brokers confirmed committed, for the line on stopping"),
    _method(FaustConsumer, "_clean_unacked_messages", ("self",),
            "consumer: a stopping worker's bounded wait for its batches' acknowledgements"),
    _method(faust.App, "_producer_flush", ("self", "logger"),
            "app: a stopping worker's producer flush, bounded"),
    PrivateName(faust.streams, "_current_event", OBJECT,
                "consumer: Faust routes table writes by the current event's partition"),
    # --- faust: windowed table (seam.table)
    _method(Collection, "_should_expire_keys", ("self",),
            "table: Faust's window expiry off (faust-streaming #385)"),
    _attribute(Collection, "_changelog_deleting", "table: the changelog is compact-only"),
    # --- faust: RocksDB store (seam.store)
    _method(Store, "_db_for_partition", ("self", "partition"),
            "store: a partition's database, written a batch at a time"),
    _method(Store, "_visible_keys", ("self", "db"), "store: a partition's keys, for retention"),
    _method(Store, "_decode_key", ("self", "key"), "store: a partition's keys, for retention"),
    _method(Store, "_encode_key", ("self", "key"), "store: the bytes Faust writes"),
    _method(Store, "_encode_value", ("self", "value"), "store: the bytes Faust writes"),
    _method(Store, "_decode_value", ("self", "value"), "store: the bytes Faust reads"),
    _attribute(Store, "_key_index", "store: Faust's key-to-partition map, deleted keys removed"),
    # --- faust: producer and web server (seam.clients, seam.web)
    _attribute(faust_aiokafka.Producer, "_producer",
               "clients: changelog batches on Faust's aiokafka producer"),
    _attribute(Web, "_runner", "web: the runner that renders parser errors as JSON"),
    # --- aiokafka: fetching (seam.fetch)
    _attribute(AIOKafkaConsumer, "_fetch_min_bytes", "fetch: the broker batches fetches"),
    _attribute(AIOKafkaConsumer, "_fetch_max_wait_ms", "fetch: the broker batches fetches"),
    _attribute(AIOKafkaConsumer, "_fetch_max_bytes", "fetch: the most one batch counts"),
    _attribute(AIOKafkaConsumer, "_isolation_level", "fetch: the isolation_level setting"),
    _attribute(AIOKafkaConsumer, "_fetcher", "fetch: the consumer's fetcher, hooked once"),
    _attribute(AIOKafkaConsumer, "_client",
               "fetch: the client its fetcher sends through (record bytes for the kernel)"),
    _attribute(Fetcher, "_records", "fetch: fetched results, hooked for the source topic"),
    _attribute(Fetcher, "_fetch_max_bytes",
               "fetch: larger fetches while a backlog of few window-keys is read"),
    _attribute(FetchResult, "_topic_partition", "fetch: getall_batches (aiokafka's getall)"),
    _attribute(FetchResult, "_partition_records", "fetch: getall_batches"),
    _method(FetchResult, "_update_position", ("self",), "fetch: getall_batches"),
    _attribute(PartitionRecords, "_tp", "fetch: unpack_batches (aiokafka's _unpack_records)"),
    _attribute(PartitionRecords, "_records", "fetch: unpack_batches, the record batches"),
    _attribute(PartitionRecords, "_records_iterator", "fetch: aiokafka's unused generator"),
    _attribute(PartitionRecords, "_check_crcs", "fetch: unpack_batches"),
    _attribute(PartitionRecords, "_isolation_level", "fetch: unpack_batches"),
    _attribute(PartitionRecords, "_aborted_producers", "fetch: unpack_batches"),
    _method(PartitionRecords, "_consume_aborted_up_to", ("self", "batch_offset"),
            "fetch: unpack_batches, aborted transactions"),
    _method(PartitionRecords, "_contains_abort_marker", ("self", "next_batch"),
            "fetch: unpack_batches, aborted transactions"),
    _attribute(AIOKafkaProducer, "_message_accumulator",
               "clients: a stopping worker fails the batches unreachable brokers never take"),
    _method(MessageAccumulator, "fail_all", ("self", "exception"),
            "clients: a stopping worker fails the batches unreachable brokers never take"),
    _attribute(MessageAccumulator, "_batches", "clients: the batches failed on stopping"),
    _attribute(MessageAccumulator, "_pending_batches",
               "clients: the batches failed on stopping"),
    # --- aiokafka: the snapshot's changelog reader (seam.clients)
    _attribute(AIOKafkaConsumer, "_client",
               "clients: a metadata refresh on demand; connections closed on stop; topic ids"),
    # --- aiohttp (seam.web)
    _method(BaseRunner, "_make_server", ("self",), "web: the server class, for JSON errors"),
)


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` (tests replace this)."""
    return metadata.version(distribution)


def _code_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const)
    return names


@functools.cache
def _known_attributes(owner: type) -> frozenset[str]:
    """Attribute names the owner's classes define, annotate, or use in their code."""
    names: set[str] = set()
    for cls in owner.__mro__[:-1]:
        names.update(vars(cls))
        names.update(vars(cls).get("__annotations__", {}))
        for value in vars(cls).values():
            if isinstance(value, classmethod | staticmethod):
                value = value.__func__
            if isinstance(value, property):
                value = value.fget
            code = getattr(inspect.unwrap(value), "__code__", None) if callable(value) else None
            if isinstance(code, CodeType):
                names |= _code_names(code)
    return frozenset(names)


def problem(entry: PrivateName) -> str | None:
    """What is wrong with ``entry`` in the installed libraries, or None."""
    owner, name = entry.owner, entry.name
    if entry.kind == ATTRIBUTE:
        assert isinstance(owner, type)
        if name not in _known_attributes(owner):
            return f"{entry.where} (attribute) is missing"
        return None
    if not hasattr(owner, name):
        return f"{entry.where} ({entry.kind}) is missing"
    if entry.kind == METHOD:
        value = getattr(owner, name)
        if not callable(value):
            return f"{entry.where} is not callable"
        found = tuple(inspect.signature(value).parameters)
        if found != entry.params:
            return f"{entry.where} takes ({', '.join(found)}), not ({', '.join(entry.params)})"
    return None


def problems(table: tuple[PrivateName, ...] | None = None) -> list[str]:
    """Every difference between the installed libraries and what the seam was written for
    (``table``: :data:`PRIVATE_NAMES`)."""
    found = []
    for distribution, pinned in PINNED_VERSIONS.items():
        try:
            version = installed_version(distribution)
        except metadata.PackageNotFoundError:
            version = "not installed"
        if version != pinned:
            found.append(f"{distribution} {version} is installed, bucket_app is pinned to "
                         f"{pinned}")
    found.extend(filter(None, map(problem, PRIVATE_NAMES if table is None else table)))
    return found


def check(table: tuple[PrivateName, ...] | None = None) -> None:
    """Stop start-up, with one line, unless the libraries are what the seam was written for."""
    found = problems(table)
    if found:
        raise IncompatibleLibrary(
            "incompatible libraries (bucket_app.seam needs updating or the pins reinstalled): "
            + "; ".join(found))

