"""bucket_app workers for the benchmark: the integration tests' :class:`Worker`, with the
benchmark's settings (60 s buckets like every contender, a row limit that lets ``/a/default``
return the whole table for the exactness check) and warning-level logs."""

from __future__ import annotations

from pathlib import Path

from bench.common import BUCKET_S
from tests.support.worker import Worker


def bucket_worker(directory: Path, brokers: str, topic: str, app_id: str, partitions: int,
                  bucket_type: str = "epoch") -> Worker:
    """A worker in ``directory`` (its own settings, data and log), not started yet."""
    return Worker(directory, topic=topic, app_id=app_id, partitions=partitions, brokers=brokers,
                  extra={"bucket_interval": str(BUCKET_S), "bucket_type": bucket_type,
                         "sql_row_limit": "1000000"},
                  log_level="warn")
