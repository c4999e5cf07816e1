"""Quix Streams: a tumbling-window count per message key, RocksDB state and changelog.

Runs with ``.bench-venv/bin/python`` (quixstreams is a bench-only dependency). Event time is the
Kafka record timestamp, which the producer sets to the message's ``timestamp`` field.
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path

import orjson
import quixstreams
from quixstreams import Application
from quixstreams.models.serializers import JSONDeserializer

sys.path.insert(0, str(Path(__file__).parent))
from child import Progress, config  # noqa: E402


def main() -> None:
    cfg = config()
    progress = Progress(cfg["ends"])
    app: Application | None = None

    def processed(topic: str, partition: int, offset: int) -> None:
        if progress.seen(partition, offset) and app is not None:
            app.stop()

    app = Application(
        broker_address=cfg["brokers"], consumer_group=cfg["group"],
        auto_offset_reset="earliest", state_dir=cfg["state_dir"], use_changelog_topics=True,
        on_message_processed=processed, loglevel=logging.WARNING,
    )
    topic = app.topic(cfg["topic"], value_deserializer=JSONDeserializer(loads=orjson.loads))
    sdf = app.dataframe(topic)
    sdf = sdf.tumbling_window(duration_ms=timedelta(seconds=60)).count().final()
    app.run(sdf)
    progress.write(cfg["result"], version=f"quixstreams {quixstreams.__version__}")


if __name__ == "__main__":
    main()
