"""`make soak`: one bucket_app worker for a long run under a steady load, measured per minute.

Not a CI test: a benchmark that runs for ``--minutes`` (default 20). It starts one worker on a
topic of its own (on the tests' broker, ``make kafka``), measures the rate the worker keeps up
with while the harness produces on the same cores (``--rate`` skips that), then produces at
``--fraction`` (70%) of it for the whole run while clients use the worker as people do:

- a filtered SQL query every second (POST /api/v1/sql);
- an SSE client on /api/v1/stream, reading every event;
- a dashboard poller: every 5 s the requests the dashboard makes (/api/v1/meta, a rolled-up
  /api/v1/buckets, /health);
- /health every 0.1 s, for the visibility latency: from a produce batch's acknowledgement to
  the first /health whose snapshot offsets include its last record.

Every minute it records the worker's RSS (main process, and with its children: the SQL pool
and the snapshot writer), open file descriptors, threads, SQL p99, visibility p99, SSE events,
failed requests and the machine's load average (the machine is shared). At the end the counts
are checked against the harness's own count of what it produced (buckets retention has not
removed), and the JSON goes to ``--out``. The goal it reports: after the first 5 minutes RSS and
descriptors within 5% (max over min of the per-minute medians of their samples every 5 s: a
minute's last sample lands anywhere on the memtables' and fetch buffers' sawtooth; both are
reported), latencies flat.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import http.client
import json
import os
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.bucket_worker import bucket_worker
from bench.common import BUCKET_S, KeepAlive, Key, Probe, _descendants, percentile, produce_steady
from tests.support.kafka import BROKERS, unique
from tests.support.worker import Worker

REPO = Path(__file__).resolve().parents[1]
WARM_UP_MIN = 5  # the goal holds after this many minutes
FLAT_WITHIN = 0.05  # RSS and descriptors: max / min - 1 after the warm-up
RETENTION = "3m"  # clean_interval: the state stops growing after a few minutes
SQL = ("SELECT server_name, topic, bucket_start, count FROM \"default\" "
       "WHERE server_name = ? AND bucket_start >= ? ORDER BY bucket_start")


@dataclass
class Samples:
    """Timestamped observations (time.monotonic()), appended by the client threads."""

    sql: list[tuple[float, float, int]] = field(default_factory=list)  # (t, seconds, status)
    dashboard: list[tuple[float, float, int]] = field(default_factory=list)
    health: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    sse: list[float] = field(default_factory=list)  # time of each row event
    sse_errors: list[tuple[float, str]] = field(default_factory=list)
    resources: list[tuple[float, dict[str, float]]] = field(default_factory=list)


def _loop(halt: threading.Event, pause_s: float, step: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        while not halt.is_set():
            started = time.monotonic()
            step()
            halt.wait(max(0.0, pause_s - (time.monotonic() - started)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _request(conn_box: list[http.client.HTTPConnection | None], worker: Worker, method: str,
             path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request on a kept-alive connection (reconnects after an error); status 0 on
    failure."""
    try:
        if conn_box[0] is None:
            conn_box[0] = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn_box[0].request(method, path, body=body, headers=headers)
        response = conn_box[0].getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        if conn_box[0] is not None:
            conn_box[0].close()
        conn_box[0] = None
        return 0, b""


def start_clients(worker: Worker, samples: Samples, halt: threading.Event) -> list[Any]:
    threads = []
    sql_conn: list[http.client.HTTPConnection | None] = [None]
    servers = [f"s-{i}" for i in range(10)]
    turn = [0]

    def sql() -> None:
        turn[0] += 1
        body = json.dumps({"sql": SQL, "params": [servers[turn[0] % len(servers)],
                                                  int(time.time()) - 600]}).encode()
        started = time.monotonic()
        status, _ = _request(sql_conn, worker, "POST", "/api/v1/sql", body)
        samples.sql.append((started, time.monotonic() - started, status))

    threads.append(_loop(halt, 1.0, sql))

    dash_conn: list[http.client.HTTPConnection | None] = [None]

    def dashboard() -> None:
        now = int(time.time())
        query = urllib.parse.urlencode({"from": now - 3600, "to": now + 60,
                                        "group_by": "server_name", "granularity": "5m",
                                        "tz": "Europe/Berlin"})
        for path in ("/api/v1/meta", f"/api/v1/buckets?{query}", "/health"):
            started = time.monotonic()
            status, _ = _request(dash_conn, worker, "GET", path)
            samples.dashboard.append((started, time.monotonic() - started, status))

    threads.append(_loop(halt, 5.0, dashboard))

    health = KeepAlive(worker.url)

    def poll_health() -> None:
        answer = health.get_json("/health")
        if answer:
            samples.health.append((time.monotonic(), {
                int(p): -1 if v.get("offset") is None else int(v["offset"])
                for p, v in answer.get("partitions", {}).items()}))

    threads.append(_loop(halt, 0.1, poll_health))

    def sse() -> None:
        while not halt.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
            try:
                conn.request("GET", "/api/v1/stream", headers={"Accept": "text/event-stream"})
                response = conn.getresponse()
                if response.status != 200:
                    samples.sse_errors.append((time.monotonic(), f"status {response.status}"))
                    halt.wait(1)
                    continue
                while not halt.is_set():
                    line = response.readline()
                    if not line:
                        samples.sse_errors.append((time.monotonic(), "stream ended"))
                        break
                    if line.startswith(b"event: row"):
                        samples.sse.append(time.monotonic())
            except (OSError, http.client.HTTPException) as exc:
                if not halt.is_set():
                    samples.sse_errors.append((time.monotonic(), repr(exc)))
                    halt.wait(1)
            finally:
                conn.close()

    thread = threading.Thread(target=sse, daemon=True)
    thread.start()
    threads.append(thread)

    assert worker.proc is not None
    pid = worker.proc.pid
    threads.append(_loop(halt, 5.0, lambda: samples.resources.append(
        (time.monotonic(), resources(pid)))))
    return threads


def resources(pid: int) -> dict[str, float]:
    """RSS (MB) of the worker's main process and with its children, their open descriptors,
    the main process's threads, and the load average."""
    main_rss = total_rss = 0.0
    fds = threads = 0
    for each in _descendants(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text().splitlines()
            fds += len(os.listdir(f"/proc/{each}/fd"))
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        rss = int(fields["VmRSS"].split()[0]) / 1024
        total_rss += rss
        if each == pid:
            main_rss, threads = rss, int(fields["Threads"])
    return {"rss_mb": main_rss, "rss_all_mb": total_rss, "fds": fds, "threads": threads,
            "load1": os.getloadavg()[0]}


def create_topic(brokers: str, topic: str, partitions: int) -> None:
    """The soak's topic, with a short retention: a long run at tens of thousands of messages
    a second must not fill the shared broker's disk."""
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs={
                "retention.ms": str(10 * 60_000), "segment.bytes": str(64 * 1024 * 1024)})])
        finally:
            await admin.close()

    asyncio.run(run())


def visible_at(health: list[tuple[float, dict[int, int]]]) -> Callable[[Probe], float | None]:
    """For a probe, the time of the first /health sample reflecting its offset."""
    series: dict[int, tuple[list[int], list[float]]] = {}
    for t, offsets in health:
        for p, offset in offsets.items():
            offs, times = series.setdefault(p, ([], []))
            if not offs or offset > offs[-1]:
                offs.append(offset)
                times.append(t)

    def find(probe: Probe) -> float | None:
        offs, times = series.get(probe.partition, ([], []))
        at = bisect.bisect_left(offs, probe.offset)
        return times[at] if at < len(offs) else None

    return find


def measure_capacity(worker: Worker, brokers: str, topic: str, partitions: int,
                     seconds: float, expected: dict[Key, int]) -> dict[str, float]:
    """Produce as fast as the harness can for ``seconds`` and take the rate at which the
    worker's snapshot reflected offsets over the last two thirds: what it keeps up with while
    producer, broker and worker share the cores."""
    samples = Samples()
    halt = threading.Event()
    health = KeepAlive(worker.url)

    def poll() -> None:
        answer = health.get_json("/health")
        if answer:
            samples.health.append((time.monotonic(), {
                int(p): int(v["offset"]) + 1 if v.get("offset") is not None else 0
                for p, v in answer.get("partitions", {}).items()}))

    thread = _loop(halt, 0.25, poll)
    before = sum(expected.values())
    started = time.monotonic()
    asyncio.run(produce_steady(brokers, topic, partitions, 1_000_000, seconds, expected))
    ended = time.monotonic()
    halt.set()
    thread.join()
    produced = (sum(expected.values()) - before) / (ended - started)
    window = [(t, sum(o.values())) for t, o in samples.health if t >= started + seconds / 3]
    visible = ((window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
               if len(window) >= 2 and window[-1][0] > window[0][0] else 0.0)
    return {"produced_msg_s": produced, "visible_msg_s": visible}


def minute_table(samples: Samples, probes: list[Probe], started: float,
                 minutes: int) -> list[dict[str, Any]]:
    seen = visible_at(samples.health)
    rows = []
    for minute in range(minutes):
        lo, hi = started + 60 * minute, started + 60 * (minute + 1)
        res = [r for t, r in samples.resources if lo <= t < hi]
        sql = [s for t, s, status in samples.sql if lo <= t < hi and status == 200]
        sql_failed = sum(1 for t, _, status in samples.sql if lo <= t < hi and status != 200)
        dash = [s for t, s, status in samples.dashboard if lo <= t < hi and status == 200]
        dash_failed = sum(1 for t, _, status in samples.dashboard
                          if lo <= t < hi and status != 200)
        latencies, unseen = [], 0
        for probe in probes:
            if lo <= probe.acked < hi:
                at = seen(probe)
                if at is None:
                    unseen += 1
                else:
                    latencies.append(max(0.0, at - probe.acked))
        last = res[-1] if res else {}

        (rss_med, rss_lo, rss_hi), (fds_med, _, _) = _spread(res, "rss_mb"), _spread(res, "fds")
        rows.append({
            "minute": minute + 1,
            "rss_mb": last.get("rss_mb"), "rss_all_mb": last.get("rss_all_mb"),
            "fds": last.get("fds"), "threads": last.get("threads"),
            "rss_median_mb": rss_med, "rss_min_mb": rss_lo, "rss_max_mb": rss_hi,
            "fds_median": fds_med,
            "load1": last.get("load1"),
            "sql_n": len(sql), "sql_failed": sql_failed,
            "sql_p99_ms": _ms(percentile(sql, 99)), "sql_p50_ms": _ms(percentile(sql, 50)),
            "dashboard_n": len(dash), "dashboard_failed": dash_failed,
            "dashboard_p99_ms": _ms(percentile(dash, 99)),
            "visible_n": len(latencies), "visible_unseen": unseen,
            "visible_p99_s": percentile(latencies, 99), "visible_p50_s": percentile(latencies, 50),
            "sse_events": sum(1 for t in samples.sse if lo <= t < hi),
            "sse_errors": sum(1 for t, _ in samples.sse_errors if lo <= t < hi),
        })
    return rows


def _spread(samples: list[dict[str, float]], name: str,
            ) -> tuple[float | None, float | None, float | None]:
    """Median, min and max of a minute's samples (every 5 s: a sawtooth's level and range)."""
    values = [sample[name] for sample in samples]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def flatness(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """After the warm-up: max / min - 1 of RSS and descriptors, and the p99s' spread."""
    after = [r for r in rows if r["minute"] > WARM_UP_MIN]

    def spread(name: str) -> float | None:
        values = [r[name] for r in after if r[name] is not None]
        return None if not values or min(values) <= 0 else max(values) / min(values) - 1

    out: dict[str, Any] = {name: spread(name) for name in (
        "rss_mb", "rss_all_mb", "fds", "threads", "rss_median_mb", "fds_median")}
    for name in ("sql_p99_ms", "visible_p99_s"):
        values = [r[name] for r in after if r[name] is not None]
        out[name] = {"min": min(values, default=None), "max": max(values, default=None),
                     "first": values[0] if values else None,
                     "last": values[-1] if values else None}
    # a minute's last sample catches the memtables' and fetch buffers' sawtooth wherever it
    # is; the median of its twelve samples is what the minute held
    out["rss_and_fds_flat"] = all(
        out[name] is not None and out[name] <= FLAT_WITHIN
        for name in ("rss_median_mb", "fds_median"))
    return out


def check_counts(worker: Worker, expected: dict[Key, int]) -> dict[str, Any]:
    """The worker's counts against the harness's, for the buckets the worker still keeps, and
    no bucket of the last two minutes missing."""
    status, body = _request([None], worker, "GET", "/a/default")
    rows = json.loads(body) if status == 200 else []
    got = {(r["server_name"], r["topic"], r["bucket_start"]): r["count"] for r in rows}
    wrong = {k: (v, expected.get(k)) for k, v in got.items() if expected.get(k) != v}
    newest = max((k[2] for k in expected), default=0)
    missing = [k for k in expected if k[2] >= newest - 2 * BUCKET_S and k not in got]
    return {"rows": len(got), "messages_in_rows": sum(got.values()),
            "messages_produced": sum(expected.values()), "wrong": len(wrong),
            "missing_recent": len(missing), "exact": not wrong and not missing,
            "examples": [[list(k), v] for k, v in list(wrong.items())[:5]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--rate", type=float, default=0,
                        help="msg/s to produce; 0 measures the capacity first")
    parser.add_argument("--fraction", type=float, default=0.7)
    parser.add_argument("--capacity-s", type=float, default=30)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--brokers", default=BROKERS)
    parser.add_argument("--workdir", type=Path, default=REPO / ".soak")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "soak-latest.json")
    parser.add_argument("--report", type=Path,
                        help="print the per-minute table of this result file and exit")
    args = parser.parse_args()
    if args.report is not None:
        print(table(json.loads(args.report.read_text())))
        return

    topic = unique("soak")
    create_topic(args.brokers, topic, args.partitions)
    worker = bucket_worker(args.workdir / topic, args.brokers, topic, unique("soak"),
                           args.partitions)
    worker.extra.update(clean_interval=RETENTION, clean_freq="30s")
    expected: dict[Key, int] = {}
    result: dict[str, Any] = {"topic": topic, "partitions": args.partitions,
                              "minutes": args.minutes, "retention": RETENTION,
                              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    worker.start()
    try:
        rate = args.rate
        if rate <= 0:
            capacity = measure_capacity(worker, args.brokers, topic, args.partitions,
                                        args.capacity_s, expected)
            result["capacity"] = capacity
            rate = args.fraction * min(capacity["visible_msg_s"], capacity["produced_msg_s"])
            print(f"soak: capacity {capacity['visible_msg_s']:.0f} msg/s visible "
                  f"({capacity['produced_msg_s']:.0f} produced); soaking at {rate:.0f}",
                  flush=True)
            worker.wait_read_to_end(topic, args.partitions)  # what the capacity run left
        result["rate_msg_s"] = rate
        samples = Samples()
        halt = threading.Event()
        threads = start_clients(worker, samples, halt)
        started = time.monotonic()
        duration_s = args.minutes * 60
        before = sum(expected.values())
        probes: list[Probe] = asyncio.run(produce_steady(
            args.brokers, topic, args.partitions, rate, duration_s, expected))
        ended = time.monotonic()
        result["produced_msg_s"] = (sum(expected.values()) - before) / (ended - started)
        time.sleep(5)  # the last probes become visible
        halt.set()
        for thread in threads:
            thread.join(15)
        assert worker.alive(), worker.tail()
        worker.wait_read_to_end(topic, args.partitions)
        rows = minute_table(samples, probes, started, int(args.minutes))
        result.update(per_minute=rows, flatness=flatness(rows), counts=check_counts(
            worker, expected), sse_error_kinds=sorted({e for _, e in samples.sse_errors}),
            ended_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    finally:
        worker.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"soak: written to {args.out}")


def table(result: dict[str, Any]) -> str:
    """The per-minute table (markdown), then the summary as JSON."""
    lines = ["| min | RSS MB, main (all) | RSS median (range) | fds (median) | threads "
             "| SQL p99 (p50) ms | dashboard p99 ms | visible p99 (p50) s | SSE events | failed "
             "| load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.get("per_minute", []):
        lines.append(
            f"| {r['minute']} | {r['rss_mb']:.0f} ({r['rss_all_mb']:.0f}) | "
            f"{r['rss_median_mb']:.0f} ({r['rss_min_mb']:.0f}-{r['rss_max_mb']:.0f}) | "
            f"{r['fds']} ({r['fds_median']:.0f}) | "
            f"{r['threads']} | {r['sql_p99_ms']:.0f} ({r['sql_p50_ms']:.0f}) | "
            f"{r['dashboard_p99_ms']:.0f} | {r['visible_p99_s']:.1f} ({r['visible_p50_s']:.1f}) "
            f"| {r['sse_events']:,} | {r['sql_failed'] + r['dashboard_failed'] + r['sse_errors']} "
            f"| {r['load1']:.1f} |")
    lines.append(json.dumps({k: result.get(k) for k in (
        "rate_msg_s", "produced_msg_s", "capacity", "flatness", "counts")}, indent=1))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
