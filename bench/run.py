"""``make bench``: every contender on the same pre-loaded topic; prints one table and writes
bench/results/latest.json. The ``shapes`` contender compares bucket_app with the bare loop and
Kafka Streams on each payload shape (``bench/shapes.py``), each on a topic of its own: a table
and JSON of its own.

    .venv/bin/python -m bench.run --messages 100000
    .venv/bin/python -m bench.run --brokers host:9092 --contenders bare,bucket_app-1
    .venv/bin/python -m bench.run --contenders shapes --shape-messages 100000 --shapes iso,avro
    .venv/bin/python -m bench.run --contenders sweep --sweep 1e3,1e5   # state sizes: sweep.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import contenders, sweep
from bench.common import (
    BUCKET_S,
    REPO,
    Key,
    kafka_script,
    percentile,
    preload,
    preload_shape,
)
from bench.contenders import SQL_CONTENDER, Job, Result
from bench.shapes import AVRO_SCHEMA, REGISTRY_V2, SHAPES
from tests.support.kafka import broker_error, create_topic, end_offsets
from tests.support.registry import REGISTRY_URL, register

LOCAL_PORT = 9492
SAME_AS_X2 = "bucket_app-1-again"
ALL = ["kcat", "bare", "quix", "faust-naive", "kstreams-alos", "kstreams-eos", "bucket_app-1",
       "bucket_app-1-python", "bucket_app-2", "shapes", "sql", "sweep"]
KERNELS = ("native", "python")  # BUCKET_APP_KERNEL; the first is the worker's default
OWN_TOPIC = {"shapes", "sql"}  # contenders that pre-load topics of their own
KSTREAMS = contenders.KSTREAMS_GUARANTEES  # contender -> processing.guarantee


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--brokers", help=f"default: a broker started on 127.0.0.1:{LOCAL_PORT}")
    parser.add_argument("--contenders", default=",".join(ALL), help=",".join(ALL))
    parser.add_argument("--load", type=float, default=0.8,
                        help="latency phase: produce at this fraction of the sustained rate")
    parser.add_argument("--probe-seconds", type=float, default=15,
                        help="latency phase: seconds of steady production")
    parser.add_argument("--live-seconds", type=float, default=15,
                        help="live phase: seconds of production faster than the backlog was "
                        "counted, to measure the sustained rate (0: use the backlog rate)")
    parser.add_argument("--sql-pause", type=float, default=0.05,
                        help="seconds between SQL queries during bucket_app's ingestion")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"shapes: the payload shapes to compare ({','.join(SHAPES)})")
    parser.add_argument("--shape-messages", type=int, default=300_000,
                        help="shapes: messages in each shape's topic")
    parser.add_argument("--shape-rounds", type=int, default=1,
                        help="shapes: bare, bucket_app and Kafka Streams this often per shape, "
                        "alternated")
    parser.add_argument("--registry", default=REGISTRY_URL,
                        help="shapes: the schema registry of avro-registry (default: "
                             "`make schema-registry`'s)")
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help="shapes: one bucket_app worker per BUCKET_APP_KERNEL on each shape "
                        f"({','.join(KERNELS)}; the first is the table's bucket_app)")
    parser.add_argument("--worker-kernel", choices=KERNELS, default=None,
                        help="BUCKET_APP_KERNEL of bucket_app-1, bucket_app-2 and the sweep "
                        "(default: the worker's own, native)")
    parser.add_argument("--shapes-no-kstreams", action="store_true",
                        help="shapes: leave Kafka Streams (at_least_once) out of each shape")
    parser.add_argument("--sql-rows", type=int, default=1_000_000,
                        help="sql: rows in the snapshot the SQL latency is measured over")
    # 300,000 took 2.4 s at the worker's rate: 34 queries, and their "p99" was the slowest
    parser.add_argument("--sql-backlog", type=int, default=1_000_000,
                        help="sql: messages ingested while the queries run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per contender")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "latest.json")
    sweep.add_arguments(parser)
    args = parser.parse_args()
    chosen = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; choose from {ALL}")
    args.shape_list = [c.strip() for c in args.shapes.split(",") if c.strip()]
    args.kernel_list = [c.strip() for c in args.kernels.split(",") if c.strip()]
    if not args.kernel_list or set(args.kernel_list) - set(KERNELS):
        parser.error(f"--kernels: choose from {list(KERNELS)}")
    if set(args.shape_list) - set(SHAPES):
        parser.error(f"unknown shapes {sorted(set(args.shape_list) - set(SHAPES))}; "
                     f"choose from {list(SHAPES)}")
    try:
        sweep_sizes = sweep.sizes(args.sweep)
    except ValueError as exc:
        parser.error(str(exc))

    started_broker = False
    brokers = args.brokers or f"127.0.0.1:{LOCAL_PORT}"
    if not args.brokers and broker_error(brokers, timeout_s=2) is not None:
        # From empty data, and none left behind: the topics of earlier runs (17 GB after a day
        # of runs here) slowed the broker's start and kept its log cleaner busy compacting
        # their changelogs on the cores being measured.
        kafka_script("clean", LOCAL_PORT)
        kafka_script("start", LOCAL_PORT)
        started_broker = True
    shape_rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    try:
        others = [c for c in chosen if c != "sweep"]
        results = run(args, brokers, others, shape_rows) if others else []
        if "sweep" in chosen and sweep_sizes:
            sweep_rows = sweep.run(args, brokers)
    finally:
        if started_broker:
            kafka_script("clean", LOCAL_PORT)
    if results:
        print_table(results, args.messages)
    if shape_rows:
        print_shapes(shape_rows, args.shape_messages)
    write_json(args.output, results, args, brokers, shape_rows)
    if sweep_rows:
        sweep.report(args.output, sweep_rows, args)


def run(args: argparse.Namespace, brokers: str, chosen: list[str],
        shape_rows: list[dict[str, Any]]) -> list[Result]:
    """Every chosen contender in turn; the shapes' rows go to ``shape_rows``."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    create_topic(topic, args.partitions, brokers=brokers)
    t0 = time.monotonic()
    expected: dict[Key, int] = {}
    if set(chosen) - OWN_TOPIC:
        expected = asyncio.run(preload(brokers, topic, args.messages))
        took = time.monotonic() - t0
        print(f"pre-loaded {args.messages} messages into {topic} ({args.partitions} "
              f"partitions, {len(expected)} buckets) in {took:.1f}s", flush=True)
    sql_from = min(k[2] for k in expected) + 5 * BUCKET_S if expected else 0
    # Kafka Streams groups by the Kafka key, which the latency phases' messages lack: it counts
    # the pre-loaded messages, whatever ran before it
    preloaded_ends = end_offsets(topic, args.partitions, brokers=brokers)
    preloaded = dict(expected)
    workdir = Path(tempfile.mkdtemp(prefix="bucket-bench-"))

    def kstreams(name: str) -> Callable[[Job], Result]:
        return lambda job: contenders.kstreams(replace(job, ends=dict(preloaded_ends)), name,
                                               preloaded)

    runners: dict[str, Callable[[Job], Result]] = {
        "kcat": contenders.kcat,
        "bare": lambda job: contenders.bare(job, expected),
        **{name: kstreams(name) for name in KSTREAMS},
        "quix": contenders.quix,
        "faust-naive": contenders.naive_faust,
        "bucket_app-1": lambda job: contenders.bucket_app(
            job, 1, expected, args.load, args.probe_seconds, args.live_seconds, sql_from,
            args.sql_pause, kernel=args.worker_kernel),
        "bucket_app-2": lambda job: contenders.bucket_app(
            job, 2, expected, args.load, args.probe_seconds, args.live_seconds, sql_from,
            args.sql_pause, kernel=args.worker_kernel),
        # throughput only, the pure-Python path beside the default kernel
        "bucket_app-1-python": lambda job: contenders.bucket_app(
            job, 1, expected, args.load, 0, 0, sql_from, args.sql_pause, kernel="python"),
        # throughput only, on the messages bucket_app-2 then counts (the 1-worker run's live
        # and latency phases have added some millions to the topic): the scaling ratio
        SAME_AS_X2: lambda job: contenders.bucket_app(
            job, 1, expected, args.load, 0, 0, sql_from, args.sql_pause, label="again",
            kernel=args.worker_kernel),
    }
    results = []
    for name in chosen:
        if name == "shapes":
            shape_rows.extend(run_shapes(args, brokers, topic, workdir))
            continue
        if name == "sql":
            print(f"running sql: {args.sql_rows} rows, then {args.sql_backlog} messages ...",
                  flush=True)
            result = contenders.bucket_app_sql(brokers, args.partitions, args.sql_rows,
                                               args.sql_backlog, workdir, args.sql_pause,
                                               args.timeout)
            print(f"  sql: {result.note}", flush=True)
            results.append(result)
            continue
        for each in [SAME_AS_X2, name] if name == "bucket_app-2" else [name]:
            ends = end_offsets(topic, args.partitions, brokers=brokers)
            job = Job(brokers, topic, ends, workdir, args.timeout)
            print(f"running {each} on "
                  f"{sum(preloaded_ends.values()) if each in KSTREAMS else job.messages} "
                  "messages ...", flush=True)
            result = runners[each](job)
            print(f"  {each}: {fmt(result.rate, '.0f')} msg/s  {result.note}", flush=True)
            results.append(result)
    print(f"work files: {workdir}")
    return results


def run_shapes(args: argparse.Namespace, brokers: str, topic: str,
               workdir: Path) -> list[dict[str, Any]]:
    """Each chosen payload shape in turn (:func:`run_shape`)."""
    return [run_shape(args, brokers, f"{topic}-{name}", workdir, name)
            for name in args.shape_list]


def run_shape(args: argparse.Namespace, brokers: str, topic: str, workdir: Path,
              name: str) -> dict[str, Any]:
    """One payload shape: a topic of its own, then the bare loop for that shape, one
    bucket_app worker per kernel (``--kernels``), kcat's drain of the topic and Kafka Streams
    at_least_once (its flat configuration, warmed up; not with ``--shapes-no-kstreams``) on it,
    ``--shape-rounds`` times, the order alternated; all checked against the counts computed
    while producing (bad records by reason for bucket_app and Kafka Streams)."""
    shape = SHAPES[name]
    create_topic(topic, args.partitions, brokers=brokers)
    registry = args.registry if shape.registry else None
    if registry is not None:  # two writer versions; the second, the latest, reads
        shape = replace(shape, schema_ids=tuple(
            register(f"{topic}-value", schema, registry) for schema in (AVRO_SCHEMA, REGISTRY_V2)))
    t0 = time.monotonic()
    expected, skipped = asyncio.run(preload_shape(brokers, topic, args.shape_messages, shape))
    ends = end_offsets(topic, args.partitions, brokers=brokers)
    print(f"shape {name}: pre-loaded {args.shape_messages} messages ({shape.what}; "
          f"{sum(skipped.values())} bad) in {time.monotonic() - t0:.1f}s", flush=True)
    bares: list[Result] = []
    apps: dict[str, list[Result]] = {kernel: [] for kernel in args.kernel_list}
    streams: list[Result] = []
    drains: list[Result] = []

    def job(n: int) -> Job:
        return Job(brokers, topic, dict(ends), workdir / f"shape-{name}-{n}", args.timeout)

    def run_bare(n: int) -> None:
        bares.append(contenders.bare(job(n), expected, name, registry))

    def run_app(kernel: str) -> Callable[[int], None]:
        def run(n: int) -> None:
            apps[kernel].append(contenders.bucket_app(
                job(n), 1, expected, args.load, 0, 0, 0, args.sql_pause,
                bucket_type=shape.bucket_type, label=name, msg_map=shape.msg_map,
                avro_schema=AVRO_SCHEMA if shape.avro and not shape.registry else None,
                skipped=skipped if shape.bad else None, sql=False, registry=registry,
                kernel=kernel))
        return run

    def run_kcat(n: int) -> None:
        drains.append(contenders.kcat(job(n)))

    def run_kstreams(n: int) -> None:
        streams.append(contenders.kstreams(job(n), "kstreams-alos", expected, shape, skipped))

    # Kafka Streams' bench app reads one local schema: no registry shape for it
    steps = [run_kcat, run_bare, *map(run_app, args.kernel_list)] + (
        [] if args.shapes_no_kstreams or shape.registry else [run_kstreams])
    for n in range(args.shape_rounds):
        for step in steps if n % 2 == 0 else steps[::-1]:
            step(n)
        ks = ("" if not streams else f", Kafka Streams alos {fmt(streams[-1].rate, '.0f')} "
              f"msg/s ({yes(streams[-1].exact)})")
        workers = ", ".join(
            f"bucket_app [{kernel}] {fmt(runs[-1].rate, '.0f')} msg/s ({yes(runs[-1].exact)}; "
            f"counted {fmt(runs[-1].counted_rate, '.0f')})" for kernel, runs in apps.items())
        print(f"  {name} round {n + 1}: kcat {fmt(drains[-1].rate, '.0f')} msg/s, "
              f"bare {fmt(bares[-1].rate, '.0f')} msg/s ({yes(bares[-1].exact)}), "
              f"{workers}{ks}", flush=True)
        for failed in [streams[-1]] if streams else []:
            if failed.rate is None:
                print(f"  kstreams-alos {name}: {failed.note}", flush=True)
        if drains[-1].rate is None:
            print(f"  kcat {name}: {drains[-1].note}", flush=True)
    return shape_row(name, args.shape_messages, skipped, bares, apps, streams, drains)


def median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def yes(exact: bool | None) -> str:
    return "-" if exact is None else ("yes" if exact else "NO")


def shape_row(name: str, messages: int, skipped: dict[str, int], bares: list[Result],
              by_kernel: dict[str, list[Result]], streams: list[Result],
              drains: list[Result]) -> dict[str, Any]:
    """One shape's figures: the median msg/s of each contender over the rounds and the ratios,
    with each round's, so the noise shows. Kafka Streams runs one stream thread and bucket_app
    one worker: their msg/s are per thread and per worker as they stand. ``bucket_app_*`` keys
    are the first kernel's (the default), ``kernels`` has each kernel's."""
    first = next(iter(by_kernel))
    apps = by_kernel[first]
    bare_rate = median([r.rate for r in bares])
    app_rate = median([r.rate for r in apps])
    counted_rate = median([r.counted_rate for r in apps])
    ks_rate = median([r.rate for r in streams])
    kcat_rate = median([r.rate for r in drains])
    ks_rounds: list[Result | None] = [*streams] + [None] * (len(apps) - len(streams))
    kernels = {}
    for kernel, runs in by_kernel.items():
        rate = median([r.rate for r in runs])
        counted = median([r.counted_rate for r in runs])
        kernels[kernel] = {
            # until the snapshot shows the last message
            "msg_per_s": rate,
            "ratio_to_bare": ratio(rate, bare_rate),
            "ratio_to_kstreams_alos_per_thread": ratio(rate, ks_rate),
            "fraction_of_kcat": ratio(rate, kcat_rate),
            # until the last record is counted: the end point of bare's, KS's and kcat's
            "counted_msg_per_s": counted,
            "counted_ratio_to_bare": ratio(counted, bare_rate),
            "counted_ratio_to_kstreams_alos_per_thread": ratio(counted, ks_rate),
            "counted_fraction_of_kcat": ratio(counted, kcat_rate),
            "visible_after_s": median([r.visible_after_s for r in runs]),
            "rounds": [r.rate for r in runs], "counted_rounds": [r.counted_rate for r in runs],
            "exact": all(r.exact for r in runs),
            "peak_rss_mb": max(r.peak_rss_mb for r in runs),
            "notes": [r.note for r in runs]}
    return {
        "shape": name,
        "what": SHAPES[name].what,
        "messages": messages,
        "bad": skipped,
        "bare_msg_per_s": bare_rate,
        "bucket_app_msg_per_s": app_rate,
        "ratio_bucket_app_to_bare": ratio(app_rate, bare_rate),
        # up to the last record counted, before the snapshot shows it (bare's end point)
        "bucket_app_counted_msg_per_s": counted_rate,
        "ratio_counted_to_bare": ratio(counted_rate, bare_rate),
        # Kafka Streams at_least_once, 1 stream thread (None: not run)
        "kstreams_alos_msg_per_s": ks_rate,
        "ratio_bucket_app_to_kstreams_alos_per_thread": ratio(app_rate, ks_rate),
        "ratio_counted_to_kstreams_alos_per_thread": ratio(counted_rate, ks_rate),
        "ratio_bare_to_kstreams_alos": ratio(bare_rate, ks_rate),
        # kcat (librdkafka) draining the topic to /dev/null: the machine's ceiling
        "kcat_msg_per_s": kcat_rate,
        "kcat_rounds": [r.rate for r in drains],
        "bucket_app_fraction_of_kcat": ratio(app_rate, kcat_rate),
        "bare_fraction_of_kcat": ratio(bare_rate, kcat_rate),
        "bucket_app_kernel": first,
        "kernels": kernels,
        "rounds": [{"bare_msg_per_s": b.rate, "bucket_app_msg_per_s": a.rate,
                    "ratio": ratio(a.rate, b.rate),
                    "bucket_app_counted_msg_per_s": a.counted_rate,
                    "kstreams_alos_msg_per_s": k.rate if k else None,
                    "ratio_to_kstreams_alos": ratio(a.rate, k.rate if k else None),
                    "bare_exact": b.exact, "bucket_app_exact": a.exact,
                    "kstreams_alos_exact": k.exact if k else None,
                    "bare_note": b.note, "bucket_app_note": a.note,
                    "kstreams_alos_note": k.note if k else None}
                   for b, a, k in zip(bares, apps, ks_rounds, strict=True)],
        "bare_peak_rss_mb": max(r.peak_rss_mb for r in bares),
        "bucket_app_peak_rss_mb": max(r.peak_rss_mb for r in apps),
        "kstreams_alos_peak_rss_mb": max((r.peak_rss_mb for r in streams), default=None),
        "bare_exact": all(r.exact for r in bares),
        "bucket_app_exact": all(r.exact for r in apps),
        "kstreams_alos_exact": all(r.exact for r in streams) if streams else None,
        "exact": all(r.exact for r in bares + streams + [
            r for runs in by_kernel.values() for r in runs]),
    }


def print_shapes(shape_rows: list[dict[str, Any]], messages: int) -> None:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    kernels = list(shape_rows[0]["kernels"]) if shape_rows else []
    header = (f"{'shape':<15} {'kcat':>9} {'bare':>8} {'KS alos':>8}" + "".join(
        f" {'[' + k + ']':>9} {'x bare':>6} {'x KS':>5} {'/kcat':>5} {'snapshot':>9} {'+s':>4}"
        for k in kernels) + f" {'exact':>6}")
    print(f"\npayload shapes: {messages} messages each, msg/s: kcat's drain, the bare loop, "
          f"Kafka Streams at_least_once (1 stream thread) and 1 bucket_app worker per "
          f"BUCKET_APP_KERNEL; load average {load}\n{header}\n{'-' * len(header)}")
    for row in shape_rows:
        line = (f"{row['shape']:<15} {fmt(row['kcat_msg_per_s'], '.0f'):>9} "
                f"{fmt(row['bare_msg_per_s'], '.0f'):>8} "
                f"{fmt(row['kstreams_alos_msg_per_s'], '.0f'):>8}")
        for kernel in kernels:
            k = row["kernels"][kernel]
            line += (f" {fmt(k['counted_msg_per_s'], '.0f'):>9} "
                     f"{fmt(k['counted_ratio_to_bare'], '.2f'):>6} "
                     f"{fmt(k['counted_ratio_to_kstreams_alos_per_thread'], '.2f'):>5} "
                     f"{fmt(k['counted_fraction_of_kcat'], '.2f'):>5} "
                     f"{fmt(k['msg_per_s'], '.0f'):>9} {fmt(k['visible_after_s'], '.1f'):>4}")
        print(f"{line} {yes(row['exact']):>6}")
    print("bucket_app [kernel]: msg/s until every record is counted (the workers' counters), the "
          "end point of the others; snapshot: msg/s until its snapshot shows the last message, "
          "+s later; kcat: start to exit, no parsing (the ceiling); KS alos: from its first "
          "record to the last, after its JIT warm-up; x KS: bucket_app per worker over Kafka "
          "Streams per stream thread; exact: every contender's counts (kcat counts nothing), "
          "each bucket_app's as its snapshot shows them; medians over rounds")


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def pct(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 50):.0f}/{percentile(values, 99):.0f}"


def by_second(at_s: list[float], values: list[float]) -> list[float]:
    """The largest value of each whole second of the phase (0 for a second without one)."""
    out: list[float] = []
    for at, value in zip(at_s, values, strict=True):
        second = int(at)
        out.extend([0.0] * (second + 1 - len(out)))
        out[second] = max(out[second], round(value))
    return out


def per_thread(r: Result) -> float | None:
    """msg/s per worker (bucket_app) or stream thread (Kafka Streams: one); the others have
    one consumer loop each."""
    if r.rate is None:
        return None
    return r.rate / 2 if r.contender == "bucket_app x2" else r.rate


def over_kstreams(results: list[Result], r: Result, name: str) -> float | None:
    """``r``'s msg/s per worker over Kafka Streams' (``name``) per stream thread."""
    ks = next((x for x in results if x.contender == name), None)
    mine, theirs = per_thread(r), ks and per_thread(ks)
    return mine / theirs if mine and theirs and r.contender != SQL_CONTENDER else None


def rows(results: list[Result]) -> list[dict[str, Any]]:
    by_name = {r.contender: r.rate for r in results}
    bare_rate, quix_rate = by_name.get("bare"), by_name.get("quix")
    out = []
    for r in results:
        sql_ok = r.contender != SQL_CONTENDER
        out.append({
            "contender": r.contender,
            "messages": r.messages,
            "seconds": r.seconds,
            "msg_per_s": r.rate,
            # the SQL run's rate includes producing its backlog: not comparable
            "ratio_to_bare": r.rate / bare_rate if r.rate and bare_rate and sql_ok else None,
            "ratio_to_quix": r.rate / quix_rate if r.rate and quix_rate and sql_ok else None,
            # per worker / per stream thread (bucket_app x2: its rate / 2)
            "ratio_to_kstreams_alos_per_thread": over_kstreams(results, r, "kstreams-alos"),
            "ratio_to_kstreams_eos_per_thread": over_kstreams(results, r, "kstreams-eos"),
            "live_msg_per_s": r.live_rate,
            "live_kept_up": r.live_kept_up,
            "peak_rss_mb": r.peak_rss_mb,
            "latency_ms_p50": percentile(r.latency_ms, 50),
            "latency_ms_p99": percentile(r.latency_ms, 99),
            "latency_samples": len(r.latency_ms),
            "sql_ms_p50": percentile(r.sql_ms, 50),
            "sql_ms_p99": percentile(r.sql_ms, 99),
            "sql_samples": len(r.sql_ms),
            "sql_ms_max": max(r.sql_ms) if r.sql_ms else None,
            "sql_ms_series": [round(ms, 1) for ms in r.sql_ms],
            "latency_ms_max": max(r.latency_ms) if r.latency_ms else None,
            "latency_ms_max_by_second": by_second(r.latency_at_s, r.latency_ms),
            "backlog_rate_latency_ms_p50": percentile(r.drain_latency_ms, 50),
            "backlog_rate_latency_ms_p99": percentile(r.drain_latency_ms, 99),
            "busy_msg_per_s": r.busy_rate,
            "busy_cores": r.busy_cores,
            "exact": r.exact,
            "note": r.note,
        })
    return out


def print_table(results: list[Result], messages: int) -> None:
    header = (f"{'contender':<20} {'msg/s':>9} {'x bare':>7} {'x quix':>7} {'x KSalos':>8} "
              f"{'x KSeos':>7} {'live msg/s':>11} "
              f"{'RSS MB':>7} "
              f"{'lat ms p50/p99':>15} {'SQL ms p50/p99':>15} {'exact':>6}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{messages} pre-loaded messages, {os.cpu_count()} cores, load average {load}"
          f"\n{header}\n{'-' * len(header)}")
    for row, r in zip(rows(results), results, strict=True):
        print(f"{row['contender']:<20} {fmt(row['msg_per_s'], '9.0f'):>9} "
              f"{fmt(row['ratio_to_bare'], '.3f'):>7} {fmt(row['ratio_to_quix'], '.2f'):>7} "
              f"{fmt(row['ratio_to_kstreams_alos_per_thread'], '.2f'):>8} "
              f"{fmt(row['ratio_to_kstreams_eos_per_thread'], '.2f'):>7} "
              f"{(('>' if r.live_kept_up else '') + fmt(r.live_rate, '.0f')):>11} "
              f"{row['peak_rss_mb']:7.0f} {pct(r.latency_ms):>15} {pct(r.sql_ms):>15} "
              f"{'-' if r.exact is None else ('yes' if r.exact else 'NO'):>6}")
    if any(r.contender in KSTREAMS for r in results):
        print("x KSalos, x KSeos: msg/s per worker (bucket_app x2: its msg/s / 2) over Kafka "
              "Streams' with 1 stream thread, at_least_once and exactly_once_v2")
    busy, whole = scaling(results, busy=True), scaling(results, busy=False)
    if busy is not None or whole is not None:
        print(f"2 workers / 1 worker on the same messages: {fmt(busy, '.2f')}x while every "
              f"partition had a backlog, {fmt(whole, '.2f')}x over the whole backlog")
        for r in scaling_runs(results):
            if r is not None and r.busy_cores:
                print(f"  {r.contender}: cores busy while every partition had a backlog: "
                      f"machine {r.busy_cores['machine_cores']:.2f} of {os.cpu_count()}, "
                      f"workers {r.busy_cores['tree_cores']:.2f}")


def scaling_runs(results: list[Result]) -> tuple[Result | None, Result | None]:
    """``bucket_app-2``'s two runs: one worker again on the same messages, then two; a run
    with --worker-kernel is named with its kernel ("bucket_app x2 [python]")."""
    named = {r.contender.split(" [")[0]: r for r in results}
    return named.get("bucket_app x1 again"), named.get("bucket_app x2")


def scaling(results: list[Result], busy: bool) -> float | None:
    """bucket_app x2's rate over the 1-worker rate on the same messages (``again``): while
    every partition still had a backlog (``busy``), or over the whole backlog, whose end the
    worker that got ahead while the other joined leaves to the other alone."""
    one, two = (None if r is None else r.busy_rate if busy else r.rate
                for r in scaling_runs(results))
    return two / one if one and two else None


def write_json(path: Path, results: list[Result], args: argparse.Namespace,
               brokers: str, shape_rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "messages": args.messages, "partitions": args.partitions, "brokers": brokers,
           "load": args.load, "probe_seconds": args.probe_seconds,
           "live_seconds": args.live_seconds,
           "sql_pause": args.sql_pause,
           "cores": os.cpu_count(), "load_average_at_end": os.getloadavg(),
           "scaling_2_workers_over_1": scaling(results, busy=True),
           "scaling_2_workers_over_1_whole_backlog": scaling(results, busy=False),
           # bucket_app x1 over Kafka Streams (1 stream thread), msg/s
           "bucket_app_x1_over_kstreams": {
               guarantee: over_kstreams(results, one, name)
               for name, guarantee in KSTREAMS.items()
               for one in results if one.contender == "bucket_app x1"},
           "results": rows(results),
           # per payload shape: bare loop and bucket_app x1 on the same topic (run_shapes)
           "shapes": shape_rows,
           "shape_messages": args.shape_messages if shape_rows else None}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
