"""The ``sweep`` contender: what one bucket_app worker costs as its state grows.

For each size N (``--sweep``, window-keys: distinct (server, topic, bucket) rows), on a topic of
its own: N messages that are each the first of their window-key, every tenth window-key getting
a second one, produced in whole batches; then one worker counts them from the beginning. Each
size reports the counting msg/s, the worker's peak RSS, the bytes of its RocksDB tables and of
its SQLite snapshot on disk, the p99 of a filtered SQL query while a live stream is ingested,
and the failover time: SIGKILL, a restart on the same ``data_dir``, and the time until the
worker answers the exact total again, messages produced during the outage included.
``report`` prints the table, adds a ``sweep`` section to the results JSON and draws the plots
(``bench/plots.py``) with the ``.bench-venv`` Python, which has matplotlib (the main venv does
not).

Every count is checked against arithmetic over what was produced, not against a stored copy:
10^7 window-keys would not fit a Python dict on this machine next to the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bench.bucket_worker import bucket_worker
from bench.common import (
    BUCKET_S,
    REPO,
    TOPICS,
    KeepAlive,
    Key,
    _descendants,
    peak_rss_mb,
    percentile,
    produce_steady,
)
from bench.contenders import BENCH_PYTHON, Sampler, reflected
from tests.support.kafka import create_topic, end_offsets
from tests.support.worker import Worker

DEFAULT_SIZES = "1e3,1e5,1e6,1e7"
BUCKETS = 1000  # one-minute buckets per key: N window-keys are N / 1000 keys x 1000 buckets
EXTRA_EVERY = 10  # window-key j with j % 10 == 0 has 2 messages, every other one 1
BATCH = 5_000  # messages in one producer batch: about 70 bytes each, well under 1 MB
IN_FLIGHT = 16  # producer batches awaiting their ack
SAMPLE_KEYS = 20  # keys whose every bucket is compared with the arithmetic
GOALS = {"peak_rss_mb": 1024.0, "sql_ms_p99": 100.0, "failover_s": 60.0}  # at 10^7
COUNT_SQL = "SELECT count(*) AS n, sum(count) AS total FROM default"
OUTAGE_RATE, OUTAGE_S = 2_000, 1.0  # msg/s and seconds produced right after the SIGKILL
SQL_TIME_LIMIT = "60s"  # the worker's sql_time_limit (measure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep's options, on ``bench.run``'s parser."""
    parser.add_argument("--sweep", default=DEFAULT_SIZES,
                        help="sweep: state sizes in window-keys, comma-separated ('' skips it)")
    parser.add_argument("--sweep-rate", type=float, default=10_000,
                        help="sweep: msg/s of the live stream the SQL queries run during")
    parser.add_argument("--sweep-seconds", type=float, default=30,
                        help="sweep: seconds of that live stream")
    parser.add_argument("--sweep-failover-timeout", type=float, default=900,
                        help="sweep: seconds a failover may take before it is reported as "
                        "more than that")
    parser.add_argument("--sweep-keep", action="store_true",
                        help="sweep: keep each size's worker directory and topics")


def sizes(text: str) -> list[int]:
    """``"1e3,1e5"`` -> [1000, 100000]; '' -> []."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            n = int(float(part))
            if n < 1 or float(part) != n:
                raise ValueError(f"--sweep: {part!r} is not a whole number of window-keys")
            out.append(n)
    return out


@dataclass(frozen=True)
class Layout:
    """N window-keys: window-key j is key ``j % keys`` in bucket ``j // keys``, its count 2 when
    ``j % EXTRA_EVERY == 0`` and 1 otherwise. Key k is server ``s-{k // TOPICS}`` and topic
    ``t-{k % TOPICS}``; the buckets end an hour before the sweep started, so the live stream's
    (the current minute's) never meet them."""

    window_keys: int
    first: int  # start of bucket 0, epoch s

    @classmethod
    def of(cls, window_keys: int, now_s: float) -> Layout:
        keys = max(1, window_keys // BUCKETS)
        buckets = -(-window_keys // keys)
        return cls(window_keys, (int(now_s) - 3600) // BUCKET_S * BUCKET_S - buckets * BUCKET_S)

    @property
    def keys(self) -> int:
        return max(1, self.window_keys // BUCKETS)

    @property
    def buckets(self) -> int:
        return -(-self.window_keys // self.keys)

    @property
    def end(self) -> int:
        """End of the last bucket: every pre-loaded row has bucket_start below it."""
        return self.first + self.buckets * BUCKET_S

    @property
    def messages(self) -> int:
        return self.window_keys + -(-self.window_keys // EXTRA_EVERY)

    @staticmethod
    def name(k: int) -> tuple[str, str]:
        return f"s-{k // TOPICS}", f"t-{k % TOPICS}"

    @staticmethod
    def count(j: int) -> int:
        return 2 if j % EXTRA_EVERY == 0 else 1

    def rows_of(self, k: int, buckets: range | None = None) -> dict[int, int]:
        """bucket_start -> count of key ``k`` (in bucket indexes ``buckets``, default all)."""
        out = {}
        for b in buckets if buckets is not None else range(self.buckets):
            j = b * self.keys + k
            if j < self.window_keys:
                out[self.first + b * BUCKET_S] = self.count(j)
        return out

    def values(self) -> Any:
        """Every pre-loaded message value in order; a window-key's second message follows its
        first."""
        prefixes = [f'{{"origin_server":"{s}","topic":"{t}","timestamp":'.encode()
                    for s, t in map(self.name, range(self.keys))]
        keys = self.keys
        for j in range(self.window_keys):
            value = prefixes[j % keys] + str(self.first + j // keys * BUCKET_S).encode() + b"}"
            yield value
            if j % EXTRA_EVERY == 0:
                yield value


@dataclass(frozen=True)
class Filter:
    """The filtered query of the SQL phase: the keys of server s-0, 60 buckets in the middle of
    the pre-loaded range, and what it must answer."""

    sql: str
    rows: int
    total: int

    @classmethod
    def of(cls, layout: Layout) -> Filter:
        lo = layout.buckets // 2
        span = range(lo, min(layout.buckets, lo + 60))
        start, stop = layout.first + span[0] * BUCKET_S, layout.first + span[-1] * BUCKET_S
        rows = [r for k in range(min(TOPICS, layout.keys))
                for r in layout.rows_of(k, span).values()]
        sql = (f"SELECT * FROM default WHERE server_name = 's-0' "
               f"AND bucket_start BETWEEN {start} AND {stop}")
        return cls(sql, len(rows), sum(rows))


async def preload(brokers: str, topic: str, layout: Layout, partitions: int) -> None:
    """The layout's messages (no Kafka key, no record timestamp), in whole batches spread over
    the partitions in turn, at most IN_FLIGHT batches unacknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=True,
                                max_batch_size=4 * 1024 * 1024, request_timeout_ms=120_000)
    await producer.start()
    per_batch = max(1, min(BATCH, -(-layout.messages // partitions)))
    pending: collections.deque[Any] = collections.deque()
    try:
        values = layout.values()
        batch, n, partition = producer.create_batch(), 0, 0
        for value in values:
            if batch.append(key=None, value=value, timestamp=None) is None:
                raise RuntimeError("pre-load batch overflowed; lower BATCH")
            n += 1
            if n == per_batch:
                pending.append(await _send(producer, batch, topic, partition))
                batch, n, partition = producer.create_batch(), 0, (partition + 1) % partitions
                while len(pending) > IN_FLIGHT:
                    await pending.popleft()
        if n:
            pending.append(await _send(producer, batch, topic, partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _send(producer: AIOKafkaProducer, batch: Any, topic: str, partition: int) -> Any:
    batch.close()
    return await producer.send_batch(batch, topic, partition=partition)


async def _delete_topics(brokers: str, prefixes: tuple[str, ...]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


class Deadline(Exception):
    """A phase took longer than it may."""


def sql_json(keep: KeepAlive, sql: str) -> Any:
    """The rows of ``sql`` (``/c/``), or None unless the worker answered 200."""
    return keep.get_json("/c/" + urllib.parse.quote(sql))


def wait_reflected(worker: Worker, keep: KeepAlive, targets: dict[int, int],
                   deadline: float, pause_s: float = 0.2,
                   on_poll: Any = None) -> float:
    """Wait until the snapshot reflects offset ``targets`` (partition -> last offset); return
    the time it first did. ``on_poll(now, health)`` sees every answer."""
    while True:
        now = time.monotonic()
        health = keep.get_json("/health")
        if on_poll is not None:
            on_poll(now, health)
        seen = reflected(health)
        if seen and all(seen.get(p, -1) >= t for p, t in targets.items()):
            return time.monotonic()
        if now > deadline:
            raise Deadline(f"snapshot not at {targets} in time; last {seen}")
        if not worker.alive():
            raise Deadline(f"worker exited:\n{worker.tail(30)}")
        time.sleep(pause_s)


def bytes_under(path: Path, pattern: str = "**/*") -> int:
    return sum(f.stat().st_size for f in path.glob(pattern) if f.is_file())


@dataclass
class Size:
    """One size of the sweep: its topic, worker and what it is expected to hold."""

    args: argparse.Namespace
    brokers: str
    layout: Layout
    directory: Path
    topic: str
    app_id: str
    worker: Worker | None = None
    live: dict[Key, int] | None = None

    @property
    def partitions(self) -> int:
        return int(self.args.partitions)

    def rows_total(self) -> tuple[int, int]:
        live = self.live or {}
        return self.layout.window_keys + len(live), self.layout.messages + sum(live.values())

    def targets(self) -> dict[int, int]:
        ends = end_offsets(self.topic, self.partitions, brokers=self.brokers)
        return {p: end - 1 for p, end in ends.items() if end > 0}

    def exact(self, keep: KeepAlive) -> str | None:
        """Why the snapshot differs from the arithmetic, or None: count(*) and sum(count), every
        bucket of SAMPLE_KEYS keys (the first, the last, the rest at random) and every row of the
        live stream."""
        rows, total = self.rows_total()
        answer = sql_json(keep, COUNT_SQL)
        if not answer or (answer[0]["n"], answer[0]["total"]) != (rows, total):
            return f"count(*), sum(count) = {answer and answer[0]}, expected {rows}, {total}"
        keys = self.layout.keys
        sample = {0, keys - 1, *random.Random(keys).sample(range(keys), min(keys, SAMPLE_KEYS))}
        for k in sorted(sample):
            server, topic = Layout.name(k)
            found = sql_json(keep, f"SELECT bucket_start, count FROM default WHERE server_name = "
                                   f"'{server}' AND topic = '{topic}' "
                                   f"AND bucket_start < {self.layout.end}")
            got = {r["bucket_start"]: r["count"] for r in found or []}
            if found is None or len(got) != len(found) or got != self.layout.rows_of(k):
                return f"key {server}|{topic}: {len(found or [])} rows differ from the arithmetic"
        live = self.live or {}
        found = sql_json(keep, "SELECT server_name, topic, bucket_start, count FROM default "
                               f"WHERE bucket_start >= {self.layout.end}")
        got = {(r["server_name"], r["topic"], r["bucket_start"]): r["count"] for r in found or []}
        if found is None or got != live:
            return f"live rows: {len(got)} found, {len(live)} produced, or counts differ"
        return None


def measure(size: Size) -> dict[str, Any]:
    """One size from an empty topic to after its failover; every figure in the returned row."""
    layout = size.layout
    row: dict[str, Any] = {"window_keys": layout.window_keys, "keys": layout.keys,
                           "buckets": layout.buckets, "messages": layout.messages,
                           "partitions": size.partitions}
    began = time.monotonic()
    create_topic(size.topic, size.partitions, brokers=size.brokers)
    asyncio.run(preload(size.brokers, size.topic, layout, size.partitions))
    row["preload_s"] = round(time.monotonic() - began, 1)
    log(f"  pre-loaded {layout.messages} messages ({layout.keys} keys x {layout.buckets} "
        f"buckets) in {row['preload_s']} s")
    worker = size.worker = bucket_worker(size.directory, size.brokers, size.topic, size.app_id,
                                         size.partitions, kernel=size.args.worker_kernel)
    # The checks read every row (count(*), sum(count)): the default limit of 2 s would cut
    # them short at 10^7 rows and a failover would look endless. The filtered query is far
    # below either limit.
    worker.extra["sql_time_limit"] = SQL_TIME_LIMIT
    row.update(count_phase(size, worker))
    keep = KeepAlive(worker.url, timeout=120)
    row["exact_counted"] = (why := size.exact(keep)) is None
    if why:
        row["error"] = f"after counting: {why}"
    row.update(sql_phase(size, worker, keep))
    why = size.exact(keep)
    row["exact_live"] = why is None
    if why:
        row.setdefault("error", f"after the live stream: {why}")
    snapshot = size.directory / "snapshot.sqlite3"
    row["sqlite_bytes"] = bytes_under(snapshot.parent, snapshot.name + "*")
    row["rocksdb_bytes"] = bytes_under(size.directory / "data" / "tables")
    row["data_dir_bytes"] = bytes_under(size.directory / "data")  # RocksDB and the rest
    row["peak_rss_mb_counting"] = round(_rss(worker), 1)
    row.update(failover(size, worker))
    row["peak_rss_mb"] = max(row["peak_rss_mb_counting"], row.get("peak_rss_mb_recovery") or 0)
    if row.get("failover_s") is not None:
        row.update(join(size))
    row["took_s"] = round(time.monotonic() - began, 1)
    return row


def count_phase(size: Size, worker: Worker) -> dict[str, Any]:
    """The worker from the beginning of the topic until its snapshot reflects every message.

    msg/s: from the first ``/health`` poll (every 0.2 s) that shows a count to the first that
    shows every offset reflected in the snapshot, less what was counted by the first (None
    when that is under 0.5 s)."""
    targets = size.targets()
    started = time.monotonic()
    worker.start(wait=False)
    keep = KeepAlive(worker.url)
    first: list[tuple[float, int]] = []

    def on_poll(now: float, health: dict[str, Any] | None) -> None:
        if not first and health and health["worker"]["counted"] > 0:
            first.append((now, health["worker"]["counted"]))

    done = wait_reflected(worker, keep, targets, started + size.args.timeout, on_poll=on_poll)
    rate = None  # also when the first count was the last: one batch says nothing of a rate
    if first and first[0][1] < size.layout.messages and done - first[0][0] >= 0.5:
        rate = (size.layout.messages - first[0][1]) / (done - first[0][0])
    log(f"  counted and in the snapshot {done - started:.1f} s after the start, "
        f"{'-' if rate is None else f'{rate:.0f}'} msg/s")
    return {"count_s": round(done - started, 2), "msg_per_s": rate}


def sql_phase(size: Size, worker: Worker, keep: KeepAlive) -> dict[str, Any]:
    """The filtered query every ``--sql-pause`` s while ``--sweep-rate`` msg/s are produced for
    ``--sweep-seconds``; each answer is checked against the arithmetic. Then waits until the
    snapshot reflects the live stream."""
    args = size.args
    query = Filter.of(size.layout)
    queries = KeepAlive(worker.url, timeout=30)

    def ask() -> str:
        rows = sql_json(queries, query.sql)
        if rows is None:
            return "failed"
        ok = len(rows) == query.rows and sum(r["count"] for r in rows) == query.total
        return "ok" if ok else "wrong"

    size.live = {}
    sampler = Sampler(ask, args.sql_pause)
    sampler.start()
    started = time.monotonic()
    try:
        asyncio.run(produce_steady(size.brokers, size.topic, size.partitions, args.sweep_rate,
                                   args.sweep_seconds, size.live))
    finally:
        sampler.stop()
    produced = sum(size.live.values()) / (time.monotonic() - started)
    ms = [(done - t0) * 1000 for t0, done, answer in sampler.samples if answer == "ok"]
    outcomes = collections.Counter(answer for _, _, answer in sampler.samples)
    wait_reflected(worker, keep, size.targets(), time.monotonic() + size.args.timeout)
    log(f"  SQL while producing {produced:.0f} msg/s: {len(ms)} answers, p50 "
        f"{fmt(percentile(ms, 50))} ms, p99 {fmt(percentile(ms, 99))} ms, "
        f"{outcomes['failed']} failed, {outcomes['wrong']} wrong")
    return {"sql_query": query.sql, "sql_rows": query.rows, "live_msg_per_s": round(produced),
            "sql_ms_p50": percentile(ms, 50), "sql_ms_p99": percentile(ms, 99),
            "sql_ms_max": max(ms) if ms else None, "sql_samples": len(ms),
            "sql_failed": outcomes["failed"], "sql_wrong": outcomes["wrong"]}


def failover(size: Size, worker: Worker) -> dict[str, Any]:
    """SIGKILL the worker (and any child it leaves), restart it on the same directory, produce
    OUTAGE_S of messages meanwhile, and time from the kill until the snapshot reflects every
    offset and the total, those messages included, is exact again (the snapshot is checked
    whenever ``/health`` shows every offset reflected)."""
    assert worker.proc is not None
    cap = size.args.sweep_failover_timeout
    family = _descendants(worker.proc.pid)
    killed = time.monotonic()
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()
    for pid in family[1:]:  # SQL children would see their pipe close; not left to chance
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.start(wait=False)
    # Messages produced during the outage must be counted too: the restarted worker has to
    # count again, not only serve the snapshot its predecessor left on disk.
    assert size.live is not None
    before = sum(size.live.values())
    asyncio.run(produce_steady(size.brokers, size.topic, size.partitions, OUTAGE_RATE,
                               OUTAGE_S, size.live))
    keep = KeepAlive(worker.url, timeout=120)
    answered = exact_again(size, worker, keep, killed + cap)
    rss = _rss(worker)
    out: dict[str, Any] = {"failover_timeout_s": cap, "peak_rss_mb_recovery": round(rss, 1),
                           "failover_messages": sum(size.live.values()) - before}
    if answered is None:
        out |= {"failover_s": None, "failover_timed_out": worker.alive(),
                "exact_after_failover": False}
        if not worker.alive():
            out["error"] = f"worker exited while recovering:\n{worker.tail(30)}"
        log(f"  failover: no exact total within {cap:.0f} s")
        return out
    why = size.exact(keep)
    out |= {"failover_s": round(answered - killed, 2), "failover_timed_out": False,
            "exact_after_failover": why is None}
    if why:
        out["error"] = f"after the failover: {why}"
    log(f"  failover: exact total again {answered - killed:.1f} s after SIGKILL "
        f"(peak RSS while recovering {rss:.0f} MB)")
    return out


def exact_again(size: Size, worker: Worker, keep: KeepAlive, deadline: float) -> float | None:
    """When ``worker``'s ``/health`` first shows every offset reflected and ``count(*)``,
    ``sum(count)`` are exact (polled every 0.25 s), or None if not before ``deadline``
    (monotonic) or the worker exits."""
    targets, (rows, total) = size.targets(), size.rows_total()
    while time.monotonic() < deadline and worker.alive():
        try:
            seen = reflected(keep.get_json("/health"))
        except OSError:
            seen = None
        if seen and all(seen.get(p, -1) >= t for p, t in targets.items()):
            answer = sql_json(keep, COUNT_SQL)
            if answer and (answer[0]["n"], answer[0]["total"]) == (rows, total):
                return time.monotonic()
        time.sleep(0.25)
    return None


def join(size: Size) -> dict[str, Any]:
    """Start a second replica (a directory of its own, the same app_id) beside the running one
    and time from its start until it answers the exact total for every partition: its
    partitions restored, its own snapshot built from the changelog. Stopped afterwards."""
    cap = size.args.sweep_failover_timeout
    joiner = bucket_worker(size.directory.with_name(size.directory.name + "-joiner"),
                           size.brokers, size.topic, size.app_id, size.partitions,
                           kernel=size.args.worker_kernel)
    joiner.extra["sql_time_limit"] = SQL_TIME_LIMIT
    started = time.monotonic()
    joiner.start(wait=False)
    try:
        keep = KeepAlive(joiner.url, timeout=120)
        answered = exact_again(size, joiner, keep, started + cap)
        if answered is None:
            log(f"  join: no exact total from the new replica within {cap:.0f} s")
            return {"join_s": None, "exact_after_join": False}
        why = size.exact(keep)
        log(f"  join: a new replica answered the exact total {answered - started:.1f} s "
            "after it started")
        out: dict[str, Any] = {"join_s": round(answered - started, 2),
                               "exact_after_join": why is None}
        if why:
            out["error"] = f"on the joining replica: {why}"
        return out
    finally:
        joiner.stop()
        if not size.args.sweep_keep:
            shutil.rmtree(joiner.directory, ignore_errors=True)


def _rss(worker: Worker) -> float:
    return peak_rss_mb(worker.proc.pid) if worker.proc is not None else 0.0


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def log(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace, brokers: str) -> list[dict[str, Any]]:
    """Every size of ``--sweep`` in turn, smallest first; a size that fails is a row with its
    error, and the next one still runs."""
    workdir = Path(tempfile.mkdtemp(prefix="bucket-sweep-"))
    now = time.time()
    rows = []
    for n in sorted(sizes(args.sweep)):
        tag = uuid.uuid4().hex[:8]
        size = Size(args, brokers, Layout.of(n, now), workdir / f"{n}-{tag}",
                    f"bench-sweep-{n}-{tag}", f"bench-sweep-app-{tag}")
        log(f"sweep: {n} window-keys ...")
        began = time.monotonic()
        try:
            row = measure(size)
        except Exception as exc:  # noqa: BLE001 - one size's failure is its row, not the run's
            row = {"window_keys": n, "error": f"{exc!r}\n{traceback.format_exc(limit=5)}",
                   "took_s": round(time.monotonic() - began, 1)}
            if size.worker is not None:
                row["log_tail"] = size.worker.tail(30)
            log(f"  failed: {exc!r}")
        finally:
            if size.worker is not None:
                size.worker.stop()
            if not args.sweep_keep:
                shutil.rmtree(size.directory, ignore_errors=True)
                asyncio.run(_delete_topics(brokers, (size.topic, size.app_id)))
        rows.append(row)
        log(f"  {n} window-keys took {row['took_s']:.0f} s")
    print(f"sweep work files: {workdir}")
    return rows


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each goal against the largest size measured: its figure and whether it is met (a
    failover past the cap is not)."""
    if not rows:
        return {}
    top = max(rows, key=lambda r: r["window_keys"])
    out: dict[str, Any] = {"window_keys": top["window_keys"]}
    for name, limit in GOALS.items():
        value = top.get(name)
        out[name] = {"goal_under": limit, "measured": value,
                     "met": value is not None and value < limit}
    return out


def report(path: Path, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print the sweep's table, add it to the results JSON as ``sweep`` and draw the plots."""
    print_table(rows)
    doc = json.loads(path.read_text()) if path.exists() else {}
    outdir = path.parent
    doc["sweep"] = {"sizes": sizes(args.sweep), "live_msg_per_s": args.sweep_rate,
                    "live_seconds": args.sweep_seconds, "sql_pause": args.sql_pause,
                    "failover_timeout_s": args.sweep_failover_timeout,
                    "goals_at_largest": goals(rows), "rows": rows, "plots": []}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    doc["sweep"]["plots"] = plot(path, outdir)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote the sweep into {path}")


def plot(path: Path, outdir: Path) -> list[str]:
    """``bench.plots`` in the .bench-venv Python; the PNG file names it wrote."""
    if not BENCH_PYTHON.exists():
        print("no .bench-venv: no plots (make bench creates it)")
        return []
    proc = subprocess.run([str(BENCH_PYTHON), "-m", "bench.plots", str(path), str(outdir)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        print(f"plots failed:\n{proc.stderr[-2000:]}")
        return []
    names = [line.strip() for line in proc.stdout.splitlines() if line.strip().endswith(".png")]
    print(f"plots: {', '.join(names)} in {outdir}")
    return names


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'window-keys':>12} {'msg/s':>8} {'RSS MB':>7} {'RocksDB MB':>11} "
              f"{'SQLite MB':>10} {'SQL ms p50/p99':>15} {'failover s':>11} {'join s':>7} "
              f"{'exact':>6} "
              f"{'took s':>7}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nstate-size sweep: 1 worker, load average {load}\n{header}\n{'-' * len(header)}")
    for r in rows:
        if "msg_per_s" not in r:
            print(f"{r['window_keys']:>12} failed: {r.get('error', '').splitlines()[0]}")
            continue
        fo = (f">{r['failover_timeout_s']:.0f}" if r.get("failover_timed_out")
              else fmt(r.get("failover_s"), ".1f"))
        exact = all(r.get(k) for k in ("exact_counted", "exact_live", "exact_after_failover")
                    ) and r.get("exact_after_join", True)
        print(f"{r['window_keys']:>12} {fmt(r['msg_per_s']):>8} {r['peak_rss_mb']:>7.0f} "
              f"{r['rocksdb_bytes'] / 1e6:>11.1f} {r['sqlite_bytes'] / 1e6:>10.1f} "
              f"{fmt(r['sql_ms_p50']) + '/' + fmt(r['sql_ms_p99']):>15} {fo:>11} "
              f"{fmt(r.get('join_s'), '.1f'):>7} {'yes' if exact else 'NO':>6} "
              f"{r['took_s']:>7.0f}")
    print(f"goals at the largest size: RSS under {GOALS['peak_rss_mb']:.0f} MB, SQL p99 under "
          f"{GOALS['sql_ms_p99']:.0f} ms, failover under {GOALS['failover_s']:.0f} s")
