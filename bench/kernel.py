"""Counting one fetch in one process, no broker: the native kernel against the Python path.

    .venv/bin/python -m bench.kernel [--records 1000000] [--shapes flat,nested,iso,avro,bad1]

For each payload shape (bench/shapes.py) it builds one fetch of ``--records`` records in Kafka
record batches of 1,000 (uncompressed, as aiokafka's producer writes them) and times, best of
``--rounds``: the kernel counting the fetch's bytes (``NativeKernel.count``: batch parsing, CRC,
JSON, grouping, and ``Classifier.locate`` for the records it leaves); aiokafka unpacking the
same bytes into records; and ``Classifier.group`` on those records' values. The Python path is
the last two together. The two counts are checked equal before anything is printed. The Avro
shapes are read as a worker reads them: ``avro`` and ``avro-confluent`` with the shape's schema
as the settings' ``avro_val_schema``, ``avro-registry`` (two writer versions, Confluent-framed)
resolved against the latest with the writer schemas a registry would give.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastavro import parse_schema

from bench.shapes import AVRO_SCHEMA, REGISTRY_V2, SHAPES, Shape, encode
from bucket_app.counting.classify import Classifier
from bucket_app.counting.decode import AVRO, RegistryDecoder, WriterSchema
from bucket_app.counting.kernel import NativeKernel
from bucket_app.counting.keys import group_identity
from bucket_app.settings import Settings
from tests.support.batches import Rec, batch, consumer_reads
from tests.support.settings import make_settings

NOW = 1_800_000_000
BATCH = 1000


#: avro-registry's schema ids (no registry here: the writer schemas are handed over as the
#: worker's cache holds them once fetched)
REGISTRY_IDS = (1, 2)


def shape_of(name: str) -> Shape:
    shape = SHAPES[name]
    return replace(shape, schema_ids=REGISTRY_IDS) if shape.registry else shape


def fetch_bytes(shape: str, n: int) -> bytes:
    parts = []
    spec = shape_of(shape)
    for first in range(0, n, BATCH):
        recs = []
        for i in range(first, min(first + BATCH, n)):
            value, _ = encode(spec, i, f"s{i % 10}", f"t{i % 100}", NOW - 3600 + i % 3600)
            recs.append(Rec(i - first, NOW * 1000, value))
        parts.append(batch(first, recs))
    return b"".join(parts)


def shape_settings(shape: str, directory: Path) -> Settings:
    spec = SHAPES[shape]
    if spec.avro:  # the Avro shapes: read with their schema (avro-confluent: framed, id ignored)
        where = directory / shape
        where.mkdir(parents=True, exist_ok=True)
        (where / "bench.avsc").write_text(json.dumps(AVRO_SCHEMA))
        return make_settings(where, msg_map=spec.msg_map, bucket_type=spec.bucket_type,
                             avro_val_schema=str(where / "bench.avsc"))
    return make_settings(directory / shape, msg_map=spec.msg_map, bucket_type=spec.bucket_type)


def best(rounds: int, work: Any) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def measure(shape: str, n: int, rounds: int, scratch: Path) -> str:
    """One shape's row: both ways' rates, checked to count the same."""
    settings = shape_settings(shape, scratch)
    data = fetch_bytes(shape, n)
    if SHAPES[shape].registry:  # two writer versions, read as the latest (REGISTRY_V2)
        reader = parse_schema(REGISTRY_V2, named_schemas={})
        writers = {schema_id: WriterSchema(schema_id, AVRO, parse_schema(each, named_schemas={}))
                   for schema_id, each in zip(REGISTRY_IDS, (AVRO_SCHEMA, REGISTRY_V2),
                                              strict=True)}
        classifier = Classifier(settings, decoder=RegistryDecoder(reader, writers))
        kernel = NativeKernel(settings, classifier, reader=reader, writers=writers)
    else:
        kernel = NativeKernel(settings)
        classifier = Classifier(settings)
    native_s, native = best(rounds, lambda: kernel.count(data, 0, 0, NOW))
    unpack_s, read = best(rounds, lambda: consumer_reads(data, 0))
    values = [r[4] for r in read.records]
    offsets = [r[0] for r in read.records]
    group_s, grouped = best(rounds, lambda: classifier.group(
        values, offsets, lambda at: read.records[at][1], 0, NOW))
    assert grouped is not None
    want = Counter(dict(zip(map(group_identity, grouped.keys), grouped.counts, strict=True)))
    got = Counter(dict(zip(map(group_identity, native.keys), native.counts, strict=True)))
    assert got == want and len(native.skipped) == len(grouped.skipped), shape
    python_s = unpack_s + group_s
    return (f"{shape:14} {n / native_s:13,.0f} {n / python_s:13,.0f} {n / group_s:11,.0f} "
            f"{python_s / native_s:15.1f} {native.located:15,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--shapes",
                        default="flat,nested,iso,avro,avro-confluent,avro-registry,bad1")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'shape':14} {'kernel rec/s':>13} {'unpack+group':>13} {'group only':>11} "
          f"{'x unpack+group':>15} {'left to Python':>15}")
    with tempfile.TemporaryDirectory() as scratch:
        for shape in args.shapes.split(","):
            print(measure(shape, args.records, args.rounds, Path(scratch)), flush=True)


if __name__ == "__main__":
    main()
