"""The Python limit: an aiokafka consumer that parses JSON with orjson and counts in a dict.

The leanest correct loop: per record only the parse and one dict increment; progress (messages,
the end offsets reached, the clock) is recorded once per fetched batch.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

sys.path.insert(0, str(Path(__file__).parent))
from child import Progress, config  # noqa: E402

BUCKET_S = 60


async def main() -> None:
    cfg = config()
    progress = Progress(cfg["ends"])
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg["brokers"], group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    counts: dict[tuple[str, str, int], int] = {}
    loads, get = orjson.loads, counts.get
    try:
        tps = [TopicPartition(cfg["topic"], p) for p in cfg["ends"]]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done = not progress.remaining
        while not done:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batches:
                progress.begin()
            for tp, records in batches.items():
                if not records:
                    continue
                for record in records:
                    msg = loads(record.value)  # type: ignore[arg-type]
                    ts = int(msg["timestamp"])
                    key = (msg["origin_server"], msg["topic"], ts - ts % BUCKET_S)
                    counts[key] = get(key, 0) + 1
                done = progress.batch(tp.partition, records[-1].offset, len(records))
    finally:
        await consumer.stop()
    progress.write(cfg["result"], keys=len(counts),
                   counts=[[*key, n] for key, n in counts.items()])


if __name__ == "__main__":
    asyncio.run(main())
