"""Contract tests: one per private library name the seam uses (bucket_app.seam.compat's table).

Each fails, naming the name, on the library upgrade that removes it or changes its parameters;
an instance attribute is also looked up on a real object where one is cheap to make. The list
in docs/design.md ("Library internals") is checked against the same table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords
from aiokafka.producer.message_accumulator import MessageAccumulator
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.stores.rocksdb import Store
from faust.tables.base import Collection
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.web.drivers.aiohttp import Web
from mode import Service

from bucket_app.seam import compat
from bucket_app.worker import create_app
from tests.support.settings import make_settings

DESIGN = Path(__file__).parents[3] / "docs" / "design.md"


@pytest.mark.parametrize("entry", compat.PRIVATE_NAMES, ids=lambda entry: entry.where)
def test_private_name_is_there_as_the_seam_uses_it(entry: compat.PrivateName) -> None:
    assert compat.problem(entry) is None, f"{compat.problem(entry)}: {entry.why}"


def test_the_pinned_versions_are_installed_and_those_of_setup_cfg() -> None:
    assert compat.problems(()) == []
    setup_cfg = (Path(__file__).parents[3] / "setup.cfg").read_text()
    for distribution, version in compat.PINNED_VERSIONS.items():
        assert re.search(rf"^\s+{re.escape(distribution)}=={re.escape(version)}$", setup_cfg,
                         flags=re.MULTILINE), distribution


async def test_instance_attributes_are_on_real_objects(tmp_path: Path) -> None:
    """The attributes, looked up on the objects a worker has (not started)."""
    app = create_app(make_settings(tmp_path), partitions=4)
    store = app.processor.counts.data
    aiokafka_consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    aiokafka_producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    tp = TopicPartition("t", 0)
    records = PartitionRecords(tp, MemoryRecords(b""), [], 0, None, None, True, READ_COMMITTED)
    objects = {
        FaustConsumer: app.consumer, Service: app.consumer, Store: store,
        Collection: app.processor.counts, faust_aiokafka.Producer: app.producer,
        Web: app.web, AIOKafkaConsumer: aiokafka_consumer, PartitionRecords: records,
        FetchResult: FetchResult(tp, assignment=None, partition_records=records, backoff=0),
        AIOKafkaProducer: aiokafka_producer,
        MessageAccumulator: aiokafka_producer._message_accumulator,
    }
    unchecked = []
    for entry in compat.PRIVATE_NAMES:
        if entry.kind != compat.ATTRIBUTE:
            continue
        instance = objects.get(entry.owner)  # type: ignore[call-overload]
        if instance is None:
            unchecked.append(entry.where)
            continue
        assert isinstance(instance, entry.owner)  # type: ignore[arg-type]
        assert hasattr(instance, entry.name), entry.where
    # a Fetcher starts fetching when it is made: its attribute is checked in its code only
    assert unchecked == ["aiokafka.consumer.fetcher.Fetcher._records",
                         "aiokafka.consumer.fetcher.Fetcher._fetch_max_bytes"]


def documented_names() -> list[str]:
    text = DESIGN.read_text()
    section = text.split("## Library internals", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_the_design_notes_list_every_private_name() -> None:
    assert documented_names() == [entry.where for entry in compat.PRIVATE_NAMES]
