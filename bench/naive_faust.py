"""Naive Faust: one agent doing ``table[key] += 1`` on a tumbling table for every event.

Run as ``python bench/naive_faust.py worker``; writes its result once every partition is counted
and keeps running until the harness stops it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import faust
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from child import Progress, config  # noqa: E402

CFG = config()
progress = Progress(CFG["ends"])

app = faust.App(CFG["group"], broker=f"kafka://{CFG['brokers']}", store="rocksdb://",
                datadir=CFG["state_dir"], web_enabled=False, topic_partitions=len(CFG["ends"]))
source = app.topic(CFG["topic"], key_type=bytes, value_type=bytes,
                   value_serializer="raw", key_serializer="raw")
counts = app.Table("counts", default=int, key_type=str, value_type=int).tumbling(60)


@app.agent(source)
async def count(stream: faust.StreamT) -> None:
    async for event in stream.events():
        msg = orjson.loads(event.value)
        counts[f"{msg['origin_server']}|{msg['topic']}"] += 1
        if progress.seen(event.message.partition, event.message.offset):
            progress.write(CFG["result"], version=f"faust-streaming {faust.__version__}")


if __name__ == "__main__":
    app.main()
