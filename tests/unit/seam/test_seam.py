"""The seam bends one app's objects, never the libraries' classes, and stops an incompatible
start-up with one line.

Behaviour through the seam (batch counting, acknowledgement, fetch unpacking) is covered by
test_intake.py and the integration tests; here: what is hooked where, and the start-up check.
"""

from __future__ import annotations

import ast
import dataclasses
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st
from intervaltree import Interval, IntervalTree

import bucket_app
from bucket_app import worker as agent
from bucket_app.errors import IncompatibleLibrary
from bucket_app.seam import compat, fetch
from bucket_app.seam.consumer import SeamConsumer, SeamConsumerThread
from bucket_app.settings import load
from bucket_app.worker import create_app
from tests.support.batches import record_batch
from tests.support.settings import SEED_INI, replace_line, write_config

PACKAGE = Path(bucket_app.__file__).parent

#: what create_app used to patch process-wide
LIBRARY_METHODS = [
    (AIOKafkaConsumerThread, "seek_to_committed"),
    (AIOKafkaConsumerThread, "_create_worker_consumer"),
    (PartitionRecords, "_unpack_records"),
    (FetchResult, "getall"),
]


def settings_for(tmp_path: Path, topic: str = "test"):
    ini = replace_line(SEED_INI, "topic", topic).replace(
        "[HTTPEndpointSetting]\n", f"[HTTPEndpointSetting]\ndata_dir = {tmp_path}/data\n")
    return load(write_config(tmp_path, ini), {})


async def test_apps_leave_the_library_classes_as_they_are(tmp_path):
    """Two apps, and one app built twice: the library's own functions stay in place, and
    each app's consumer carries its own hooks."""
    before = {(cls, name): vars(cls)[name] for cls, name in LIBRARY_METHODS}
    first = create_app(settings_for(tmp_path), partitions=4)
    again = create_app(settings_for(tmp_path), partitions=4)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = create_app(settings_for(other_dir, topic="elsewhere"), partitions=2)
    for (cls, name), original in before.items():
        assert vars(cls)[name] is original, f"{cls.__name__}.{name} was replaced"
        assert getattr(cls, name).__module__.startswith(("faust.", "aiokafka.")), name
    plain = faust.App("plain-app", broker="kafka://127.0.0.1:1",
                      datadir=str(tmp_path / "plain"))
    stock = plain.consumer._thread._create_worker_consumer(plain.transport)
    assert (stock._fetch_min_bytes, stock._fetch_max_wait_ms) == (1, 1500)
    assert type(plain.consumer)._drain_messages is not SeamConsumer._drain_messages

    intakes = set()
    for app, topic in ((first, "test"), (again, "test"), (other, "elsewhere")):
        consumer = app.consumer
        assert isinstance(consumer, SeamConsumer)
        assert isinstance(consumer._thread, SeamConsumerThread)
        assert consumer.drain == app.intake.drain and app.intake.topic == topic
        intakes.add(id(app.intake))
        assert app.consumer_options.source_topic == topic
        tuned = consumer._thread._create_worker_consumer(app.transport)
        assert (tuned._fetch_min_bytes, tuned._fetch_max_wait_ms, tuned._fetch_max_bytes) == (
            agent.FETCH_MIN_BYTES, agent.FETCH_MAX_WAIT_MS, agent.FETCH_MAX_BYTES)
    assert len(intakes) == 3


async def test_committed_offset_seek_rereads_source_partitions_without_one(tmp_path):
    app = create_app(settings_for(tmp_path), partitions=4)
    thread = app.consumer._thread
    committed = {TopicPartition("test", 0): 0, TopicPartition("test", 1): None,
                 TopicPartition("test", 2): 5, TopicPartition("other", 0): None}
    sought: list[TopicPartition] = []

    async def seek_to_committed() -> dict:
        return committed

    async def seek_to_beginning(*tps: TopicPartition) -> None:
        sought.extend(tps)

    async def call_thread(method, *args, **kwargs):
        return await method(*args, **kwargs)

    fake = SimpleNamespace(seek_to_committed=seek_to_committed,
                           seek_to_beginning=seek_to_beginning)
    thread._ensure_consumer = lambda: fake
    thread.call_thread = call_thread
    assert await thread.seek_to_committed() == committed
    assert sorted(sought) == [TopicPartition("test", 0), TopicPartition("test", 1)]


async def test_the_fetch_hook_reads_the_source_topic_a_record_batch_at_a_time():
    """One consumer's fetcher: the source topic's fetch results give aiokafka's records and
    position from one getall, other topics' results are aiokafka's own."""
    fetcher = SimpleNamespace(_records=OrderedDict())
    fetch.bulk_source_records(SimpleNamespace(_fetcher=fetcher), "source")
    fetched = (record_batch(0, [b"a0", b"a1", b"a2"])
               + record_batch(3, [b"t3", b"t4"], producer_id=77)
               + record_batch(5, [b"c5", b"c6"]))
    found = {}
    for topic in ("source", "other"):
        tp = TopicPartition(topic, 0)
        subscription = SubscriptionState()
        subscription.assign_from_user({tp})
        assignment = subscription.subscription.assignment
        assignment.state_value(tp).seek(1)
        records = PartitionRecords(tp, MemoryRecords(fetched), [(77, 3)], 1, None, None, True,
                                   READ_COMMITTED)
        fetcher._records[tp] = FetchResult(tp, assignment=assignment,
                                           partition_records=records, backoff=0)
        result = fetcher._records[tp]
        assert type(result) is FetchResult  # aiokafka's fetcher checks exactly this
        got = result.getall()
        assert "getall" not in vars(result) and not result.has_more()
        found[topic] = ([(r.offset, r.value) for r in got],
                        assignment.state_value(tp).position)
    assert found["source"] == found["other"]
    assert found["source"] == ([(1, b"a1"), (2, b"a2"), (5, b"c5"), (6, b"c6")], 7)

    tp = TopicPartition("source", 1)
    fetcher._records[tp] = FetchResult(tp, assignment=None, partition_records=None, backoff=0)
    with pytest.raises(RuntimeError, match="fetched whole"):
        fetcher._records[tp].getall(10)


def test_another_version_stops_start_up_with_one_line(tmp_path, monkeypatch, capsys):
    versions = {"faust-streaming": "0.16.0", "aiokafka": "0.14.0"}
    monkeypatch.setattr(compat, "installed_version", versions.__getitem__)
    with pytest.raises(IncompatibleLibrary, match=r"faust-streaming 0\.16\.0 is installed, "
                       r"bucket_app is pinned to 0\.15\.3$"):
        create_app(settings_for(tmp_path), partitions=4)

    # as the worker sees it: one line on stderr, exit status 2
    ini = SEED_INI.replace("[HTTPEndpointSetting]\n",
                           f"[HTTPEndpointSetting]\ndata_dir = {tmp_path}/data\n")
    monkeypatch.setenv("BUCKET_APP_SETTINGS", str(write_config(tmp_path, ini)))
    monkeypatch.setattr(bucket_app, "_app", None)
    monkeypatch.setattr(agent, "source_partitions", lambda settings: 4)
    with pytest.raises(SystemExit) as stopped:
        bucket_app.load_app()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("bucket_app: incompatible libraries") and "0.16.0" in err[-1]


def test_a_missing_or_changed_private_name_stops_start_up(tmp_path, monkeypatch):
    class Thread(AIOKafkaConsumerThread):  # a throwaway Faust without these two
        async def _drain_messages(self, fetcher, timeout):  # a changed signature
            pass

    monkeypatch.delattr(Thread, "_drain_messages")  # the name is gone ...
    table = list(compat.PRIVATE_NAMES)
    drain = next(i for i, e in enumerate(table) if e.name == "_drain_messages")
    buffered = next(i for i, e in enumerate(table) if e.name == "_buffered_partitions")
    table[drain] = dataclasses.replace(table[drain], owner=Thread)
    table[buffered] = dataclasses.replace(table[buffered], owner=Thread)
    monkeypatch.setattr(compat, "PRIVATE_NAMES", tuple(table))
    with pytest.raises(IncompatibleLibrary) as refused:
        create_app(settings_for(tmp_path), partitions=4)
    owner = f"{__name__}.{Thread.__qualname__}"
    assert str(refused.value) == (
        "incompatible libraries (bucket_app.seam needs updating or the pins reinstalled): "
        f"{owner}._drain_messages (method) is missing; "
        f"{owner}._buffered_partitions (attribute) is missing")

    Thread._drain_messages = lambda self, fetcher, timeout: None  # ... and back, changed
    with pytest.raises(IncompatibleLibrary, match=r"_drain_messages takes \(self, fetcher, "
                       r"timeout\), not \(self, fetcher\)"):
        compat.check()


def private_uses_outside_the_seam() -> list[str]:
    """Attribute accesses (other than on self/cls) and imports, outside bucket_app/seam/, of a
    name in the seam's table."""
    names = {entry.name for entry in compat.PRIVATE_NAMES}
    libraries = ("faust", "mode", "aiokafka", "aiohttp")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "seam" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and node.attr in names and not (
                    isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}):
                found.append(f"{where} .{node.attr}")
            elif (isinstance(node, ast.ImportFrom) and node.module
                  and node.module.split(".")[0] in libraries):
                found += [f"{where} import {a.name}" for a in node.names
                          if a.name.startswith("_")]
    return found


def test_only_the_seam_names_library_internals():
    assert private_uses_outside_the_seam() == []



@settings(max_examples=300, deadline=None)
@given(acked=st.sets(st.integers(0, 60), max_size=40), committed=st.none() | st.integers(0, 30),
       gaps=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 5)), max_size=2))
def test_the_offset_to_commit_is_fausts(acked, committed, gaps):
    """SeamConsumer._new_offset (a bisection) answers as Faust's consecutive_numbers scan,
    and leaves the acknowledged offsets and their index as Faust does."""
    def consumer(cls):
        tp = TP("t", 0)
        each = object.__new__(cls) if cls is SeamConsumer else SimpleNamespace()
        order = sorted(acked, key=lambda o: (o * 7919) % 61)  # acknowledged out of order
        each._acked = {tp: list(order)}
        each._acked_index = {tp: set(acked)}
        each._committed_offset = {tp: committed}
        each._gap = {tp: IntervalTree(Interval(b, b + n) for b, n in gaps)}
        each._runs = {}
        return each, tp

    seam, tp = consumer(SeamConsumer)
    theirs, _ = consumer(None)
    for _ in range(2):  # twice: the second commit sees what the first left
        assert seam._new_offset(tp) == FaustConsumer._new_offset(theirs, tp)
        assert sorted(seam._acked[tp]) == sorted(theirs._acked[tp])
        assert seam._acked_index[tp] == theirs._acked_index[tp]
