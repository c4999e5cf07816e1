"""The dead-letter topic: every record counting skipped, with the reason, when it is set.

A dead letter carries the original key and value bytes and timestamp, and as headers the
source topic, partition and offset and the skip reason (the ``reason`` label of
``/metrics`` and /health). The intake sends a batch's dead letters and waits for the brokers
to acknowledge them before it sends the batch's changelog records, whose progress record
marks the batch counted: a worker that dies in between counts the batch again and sends its
dead letters again. So each skipped record reaches the topic at least once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bucket_app.seam import clients

HEADER_TOPIC = "bucket_app.source_topic"
HEADER_PARTITION = "bucket_app.source_partition"
HEADER_OFFSET = "bucket_app.source_offset"
HEADER_REASON = "bucket_app.reason"


@dataclass(frozen=True)
class DeadLetter:
    """A skipped record (an aiokafka record of the source topic), its source partition and why
    it was skipped."""

    record: Any
    partition: int
    reason: str


def headers(letter: DeadLetter, source_topic: str) -> list[tuple[str, bytes]]:
    record = letter.record
    return [(HEADER_TOPIC, source_topic.encode()),
            (HEADER_PARTITION, str(letter.partition).encode()),
            (HEADER_OFFSET, str(record.offset).encode()),
            (HEADER_REASON, letter.reason.encode())]


class DeadLetterSender:
    """Sends dead letters on Faust's producer and waits until the brokers have them."""

    def __init__(self, app: Any, topic: str, source_topic: str) -> None:
        self.app = app
        self.topic = topic
        self.source_topic = source_topic

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        producer = clients.aiokafka_producer(self.app)
        futures = [await producer.send(
            self.topic, letter.record.value, key=letter.record.key,
            timestamp_ms=letter.record.timestamp, headers=headers(letter, self.source_topic))
            for letter in letters]
        await asyncio.gather(*futures)
