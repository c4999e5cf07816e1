"""Counting one fetch in one process, no broker: the native kernel against the Python path.

    .venv/bin/python -m bench.kernel [--records 1000000] [--shapes flat,nested,iso,bad1]

For each payload shape (bench/shapes.py) it builds one fetch of ``--records`` records in Kafka
record batches of 1,000 (uncompressed, as aiokafka's producer writes them) and times, best of
``--rounds``: the kernel counting the fetch's bytes (``NativeKernel.count``: batch parsing, CRC,
JSON, grouping, and ``Classifier.locate`` for the records it leaves); aiokafka unpacking the
same bytes into records; and ``Classifier.group`` on those records' values. The Python path is
the last two together. The two counts are checked equal before anything is printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.shapes import SHAPES, encode
from bucket_app.counting.classify import Classifier
from bucket_app.counting.kernel import NativeKernel
from bucket_app.counting.keys import group_identity
from bucket_app.settings import Settings
from tests.support.batches import Rec, batch, consumer_reads
from tests.support.settings import make_settings

NOW = 1_800_000_000
BATCH = 1000


def fetch_bytes(shape: str, n: int) -> bytes:
    parts = []
    for first in range(0, n, BATCH):
        recs = []
        for i in range(first, min(first + BATCH, n)):
            value, _ = encode(SHAPES[shape], i, f"s{i % 10}", f"t{i % 100}", NOW - 3600 + i % 3600)
            recs.append(Rec(i - first, NOW * 1000, value))
        parts.append(batch(first, recs))
    return b"".join(parts)


def shape_settings(shape: str, directory: Path) -> Settings:
    spec = SHAPES[shape]
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
    return (f"{shape:8} {n / native_s:13,.0f} {n / python_s:13,.0f} {n / group_s:11,.0f} "
            f"{python_s / native_s:15.1f} {native.located:15,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--shapes", default="flat,nested,iso,bad1")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'shape':8} {'kernel rec/s':>13} {'unpack+group':>13} {'group only':>11} "
          f"{'x unpack+group':>15} {'left to Python':>15}")
    with tempfile.TemporaryDirectory() as scratch:
        for shape in args.shapes.split(","):
            print(measure(shape, args.records, args.rounds, Path(scratch)), flush=True)


if __name__ == "__main__":
    main()
