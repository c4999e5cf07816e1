"""bucket_app workers for the benchmark: the integration tests' :class:`Worker`, with the
benchmark's settings (60 s buckets like every contender, a row limit that lets ``/a/default``
return the whole table for the exactness check) and warning-level logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import BUCKET_S
from tests.support.worker import MSG_MAP, Worker

AVRO_SCHEMA_FILE = "value.avsc"


def bucket_worker(directory: Path, brokers: str, topic: str, app_id: str, partitions: int,
                  bucket_type: str = "epoch", msg_map: dict[str, str] | None = None,
                  avro_schema: dict[str, Any] | None = None,
                  registry: str | None = None, kernel: str | None = None) -> Worker:
    """A worker in ``directory`` (its own settings, data and log), not started yet.

    ``msg_map``: the tests' (origin_server, topic) when None; the snapshot's columns stay
    server_name and topic. ``avro_schema``: values are Avro with this schema (written to
    ``directory``), else JSON; ``registry``: a schema registry's URL (its subject's latest
    version is the reader schema when there is no ``avro_schema``); ``kernel``: the worker's
    ``BUCKET_APP_KERNEL`` (``native``, ``python``; None: the worker's default). The Worker
    drops inherited ``BUCKET_APP_*`` variables, so the choice goes in its ``env``."""
    extra = {"bucket_interval": str(BUCKET_S), "bucket_type": bucket_type,
             "sql_row_limit": "1000000"}
    if avro_schema is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / AVRO_SCHEMA_FILE).write_text(json.dumps(avro_schema))
        extra["avro_val_schema"] = str(directory / AVRO_SCHEMA_FILE)
    if registry is not None:
        extra["schema_registry_url"] = registry
    return Worker(directory, topic=topic, app_id=app_id, partitions=partitions, brokers=brokers,
                  extra=extra, msg_map=dict(msg_map or MSG_MAP), log_level="warn",
                  env={} if kernel is None else {"BUCKET_APP_KERNEL": kernel})
