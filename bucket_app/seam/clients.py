"""aiokafka clients behind Faust's and our own: the producer Faust sends with, a consumer's
metadata refresh, and closing a consumer's connections."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


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


def fail_sends(producer: AIOKafkaProducer, exc: Exception) -> int:
    """Fail every batch ``producer`` holds or has in flight with ``exc`` (so its flush and
    stop return); the number of batches failed."""
    accumulator = producer._message_accumulator
    pending = sum(len(batches) for batches in accumulator._batches.values()) + len(
        accumulator._pending_batches)
    accumulator.fail_all(exc)
    return pending
