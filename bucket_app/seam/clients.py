"""aiokafka clients behind Faust's and our own: the producer Faust sends with, a consumer's
metadata refresh, closing a consumer's connections, and topic ids (a Metadata v10 request
aiokafka does not have, built from its protocol types and sent through its client)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from io import BytesIO
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import IncompatibleBrokerVersion, KafkaConnectionError
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)


def aiokafka_producer(app: Any) -> AIOKafkaProducer:
    """The aiokafka producer under a started Faust app's producer (Faust's aiokafka driver
    keeps it in ``Producer._producer``): changelog batches go out on it, so Faust's commit,
    which flushes it, covers them."""
    producer = app.producer._producer
    if producer is None:
        raise RuntimeError("Faust's producer has not started")
    return producer  # type: ignore[no-any-return]


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Make ``consumer`` fetch the cluster's metadata now (aiokafka's public ``topics()``
    fetches it into a copy, so ``partitions_for_topic`` would not see a new topic)."""
    await consumer._client.force_metadata_update()


async def close_connections(consumer: AIOKafkaConsumer) -> None:
    """Close ``consumer``'s connections to the brokers, the last step of its ``stop``."""
    await consumer._client.close()


# --- topic ids: aiokafka speaks Metadata up to v5, topic ids arrive in v10 ------------------

class _Uuid(AbstractType[str | None]):
    """Kafka's UUID field, as Kafka prints topic ids (URL-safe base64, no padding); the
    all-zero UUID, which a broker sends for a topic without an id, as None."""

    @classmethod
    def encode(cls, value: str | None) -> bytes:
        if value is None:
            return bytes(16)
        return base64.urlsafe_b64decode(value + "==")

    @classmethod
    def decode(cls, data: BytesIO) -> str | None:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        if raw == bytes(16):
            return None
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class _MetadataResponseV10(Response):
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", CompactArray(Schema(
            ("node_id", Int32), ("host", CompactString("utf-8")), ("port", Int32),
            ("rack", CompactString("utf-8")), ("tags", TaggedFields)))),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        ("topics", CompactArray(Schema(
            ("error_code", Int16), ("name", CompactString("utf-8")), ("topic_id", _Uuid),
            ("is_internal", Boolean),
            ("partitions", CompactArray(Schema(
                ("error_code", Int16), ("partition_index", Int32), ("leader_id", Int32),
                ("leader_epoch", Int32), ("replica_nodes", CompactArray(Int32)),
                ("isr_nodes", CompactArray(Int32)), ("offline_replicas", CompactArray(Int32)),
                ("tags", TaggedFields)))),
            ("topic_authorized_operations", Int32), ("tags", TaggedFields)))),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class _MetadataRequestV10(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = _MetadataResponseV10
    SCHEMA = Schema(
        ("topics", CompactArray(Schema(
            ("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _TopicIdsRequest(Request[_MetadataRequestV10]):
    API_KEY = 3

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = list(topics)

    def build(self, request_struct_class: type[_MetadataRequestV10]) -> _MetadataRequestV10:
        return request_struct_class([(None, name, {}) for name in self.topics],
                                    False, False, False, {})


async def topic_ids(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> dict[str, str | None]:
    """Each of ``topics``' topic id (Kafka 2.8+, a new one each time a topic is created) as
    Kafka prints it, or None for a topic the broker gives no id; a topic the broker does not
    know is left out. Sent through ``consumer``'s client (its connections, its security) to
    a broker it knows. Raises aiokafka's errors: ``IncompatibleBrokerVersion`` from a broker
    without Metadata v10 (Kafka before 2.8), which has no topic ids."""
    client = consumer._client
    node = client.get_random_node()
    if node is None:
        raise KafkaConnectionError("no broker known to ask for topic ids")
    try:
        response = await client.send(node, _TopicIdsRequest(topics))
    except NotImplementedError as exc:  # Request.prepare: the broker's versions end below v10
        raise IncompatibleBrokerVersion(str(exc)) from None
    found: dict[str, str | None] = {}
    for error_code, name, topic_id, *_ in response.topics:
        if error_code == 0 and name is not None:
            found[name] = topic_id
    return found

def fail_sends(producer: AIOKafkaProducer, exc: Exception) -> int:
    """Fail every batch ``producer`` holds or has in flight with ``exc`` (so its flush and
    stop return); the number of batches failed."""
    accumulator = producer._message_accumulator
    pending = sum(len(batches) for batches in accumulator._batches.values()) + len(
        accumulator._pending_batches)
    accumulator.fail_all(exc)
    return pending
