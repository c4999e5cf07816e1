"""Runs each contender against the pre-loaded topic and returns what it measured."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bucket_worker import bucket_worker
from bench.common import (
    BUCKET_S,
    REPO,
    SERVERS,
    TOPICS,
    CpuMark,
    KeepAlive,
    Key,
    Probe,
    peak_rss_mb,
    percentile,
    preload_distinct,
    preload_quickly,
    produce_steady,
)
from bench.shapes import SHAPES, Shape, kstreams_spec
from tests.support.http import http, http_json
from tests.support.kafka import create_topic, end_offsets
from tests.support.worker import Worker

BENCH = Path(__file__).resolve().parent
SQL_CONTENDER = "bucket_app SQL"
# the live phase produces at this fraction of the backlog rate: more than the workers count
# while the broker and the producer share their cores (if they keep up, the result says so)
LIVE_LOAD = 1.0
FLAT_SHAPE = SHAPES["flat"]
BENCH_PYTHON = REPO / ".bench-venv" / "bin" / "python"


@dataclass
class Job:
    brokers: str
    topic: str
    ends: dict[int, int]  # end offset of each partition when the contender starts
    workdir: Path
    timeout_s: float

    @property
    def messages(self) -> int:
        return sum(self.ends.values())


@dataclass
class Result:
    contender: str
    messages: int
    seconds: float | None
    peak_rss_mb: float
    latency_ms: list[float] = field(default_factory=list)
    # seconds from the start of the latency phase to each probe's ack, as latency_ms
    latency_at_s: list[float] = field(default_factory=list)
    sql_ms: list[float] = field(default_factory=list)
    # msg/s made visible while produced live at the backlog rate (None: not measured); a
    # lower bound if the workers kept up with everything produced
    live_rate: float | None = None
    live_kept_up: bool = False
    # latency at the load fraction of the backlog rate (msg/s above), for comparison
    drain_latency_ms: list[float] = field(default_factory=list)
    # msg/s from the group settling until the first partition was drained: every worker had a
    # backlog throughout (None: too short to tell)
    busy_rate: float | None = None
    exact: bool | None = None
    note: str = ""
    # bucket_app: msg/s from the first count until every record was counted or skipped (the
    # workers' counters), before the snapshot showed the last (None: too short to tell); the
    # records counted by the first poll are left out. With 2 workers it includes the rebalance.
    counted_rate: float | None = None
    # bucket_app: seconds from every record counted until the snapshot showed the last
    visible_after_s: float | None = None
    # bucket_app: cores busy over the busy_rate's window, the machine's and the workers'
    # (their process trees), so that a scaling ratio can be read against what was left
    busy_cores: dict[str, float] | None = None

    @property
    def rate(self) -> float | None:
        return self.messages / self.seconds if self.seconds else None


def run_child(name: str, command: list[str], job: Job) -> Result:
    """Start a contender process, wait for its result file, stop it if it is still running."""
    directory = job.workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    result_path = directory / "result.json"
    cfg = {"brokers": job.brokers, "topic": job.topic, "ends": job.ends,
           "result": str(result_path), "group": f"bench-{name}-{uuid.uuid4().hex[:8]}",
           "state_dir": str(directory / "state")}
    env = dict(os.environ, BENCH_CONFIG=json.dumps(cfg), PYTHONUNBUFFERED="1")
    with (directory / "log.txt").open("wb") as log:
        proc = subprocess.Popen(command, cwd=directory, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + job.timeout_s
        while not result_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if not result_path.exists():
        tail = (directory / "log.txt").read_text(errors="replace")[-2000:]
        return Result(name, job.messages, None, 0.0, note=f"no result; log tail:\n{tail}")
    data = json.loads(result_path.read_text())
    seconds = data["last"] - data["first"] if data["first"] and data["last"] else None
    note = f"counted {data['messages']}" + (f", {data['version']}" if "version" in data else "")
    return Result(name, job.messages, seconds, data["peak_rss_mb"], note=note)


def child_exact(job: Job, name: str, expected: dict[Key, int]) -> bool | None:
    """The ``counts`` rows ([server, topic, bucket_start, count]) that contender ``name`` wrote
    to its result file equal the harness's counts (None: it wrote none)."""
    path = job.workdir / name / "result.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text()).get("counts")
    if rows is None:
        return None
    found = {(server, topic, int(start)): count for server, topic, start, count in rows}
    return len(found) == len(rows) and found == expected


def bare(job: Job, expected: dict[Key, int], shape: str = "flat",
         registry: str | None = None) -> Result:
    """The bare loop (bare.py) for payload ``shape``; its own directory per shape."""
    name = "bare" if shape == "flat" else f"bare-{shape}"
    command = [sys.executable, str(BENCH / "bare.py"), shape]
    result = run_child(name, command + ([registry] if registry else []), job)
    result.contender = "bare" if shape == "flat" else f"bare {shape}"
    result.exact = child_exact(job, name, expected)
    return result


KSTREAMS = BENCH / "kstreams"
KSTREAMS_JAR = KSTREAMS / "target" / "kstreams-bench.jar"
KSTREAMS_GUARANTEES = {"kstreams-alos": "at_least_once", "kstreams-eos": "exactly_once_v2"}
KSTREAMS_HEAP = "-Xmx1g"


def build_kstreams() -> str | None:
    """Build bench/kstreams (jar and target/lib) unless it is newer than its sources: offline
    from ~/.m2 first, else from Maven Central. Returns why it failed, or None."""
    sources = [KSTREAMS / "pom.xml", *(f for f in (KSTREAMS / "src").rglob("*") if f.is_file())]
    if KSTREAMS_JAR.exists() and (KSTREAMS / "target" / "lib").is_dir() and all(
            f.stat().st_mtime <= KSTREAMS_JAR.stat().st_mtime for f in sources):
        return None
    output = ""
    for offline in (["-o"], []):
        try:
            proc = subprocess.run(["mvn", "-q", "-B", *offline, "-f", str(KSTREAMS / "pom.xml"),
                                   "package"], capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"mvn failed: {e}"
        if proc.returncode == 0:
            return None
        output = proc.stdout + proc.stderr
    return f"mvn package failed:\n{output[-2000:]}"


def kstreams(job: Job, name: str, expected: dict[Key, int], shape: Shape = FLAT_SHAPE,
             skipped: dict[str, int] | None = None) -> Result:
    """Kafka Streams (bench/kstreams): a windowed count, one stream thread, at_least_once or
    exactly_once_v2, on payload ``shape``; exact when its window store (queried at the end)
    equals the harness's counts and the records it skipped, by reason, equal ``skipped`` (none
    if not given)."""
    error = "no java on PATH (Java 17)" if shutil.which("java") is None else build_kstreams()
    label = name if shape == FLAT_SHAPE else f"{name} {shape.name}"
    if error is not None:
        return Result(label, job.messages, None, 0.0, note=error)
    classpath = f"{KSTREAMS_JAR}:{KSTREAMS / 'target' / 'lib'}/*"
    extra = os.environ.get("BENCH_KSTREAMS_JVM_OPTS", "").split()  # e.g. -Dks.NAME=VALUE
    result = run_child(name, ["java", KSTREAMS_HEAP, *extra, "-cp", classpath,
                              "bench.kstreams.Main", KSTREAMS_GUARANTEES[name],
                              json.dumps(kstreams_spec(shape))], job)
    result.contender = label
    result.exact = child_exact(job, name, expected)
    path = job.workdir / name / "result.json"
    if result.exact is not None and path.exists():
        found = json.loads(path.read_text()).get("skipped")
        result.exact = result.exact and found == (skipped or {})
        if found or skipped:
            result.note += f"; skipped {found} (expected {skipped or {}})"
    if result.seconds and path.exists():
        data = json.loads(path.read_text())
        cpu, warm = data.get("cpu_seconds"), data.get("warmup")
        if cpu:
            result.note += (f"; JVM CPU {cpu:.1f} s in {result.seconds:.1f} s "
                            f"({cpu / result.seconds:.1f} cores)")
        if warm and warm.get("seconds"):
            warm_rate = warm["last_pass_messages"] / warm["seconds"]
            result.note += (f"; JIT warm-up: {warm['messages']} messages in {warm['passes']} "
                            f"passes, the last whole one {warm_rate:.0f} msg/s")
    return result


def kcat(job: Job) -> Result:
    """kcat (librdkafka) draining the topic to /dev/null, no parsing: the rate at which this
    machine's broker hands the topic to one consumer, the ceiling of every contender. Timed
    from its start to its exit (``-e``: at the end of every partition), start-up and metadata
    included; exact when it exits 0 (it counts nothing)."""
    binary = shutil.which("kcat") or shutil.which("kafkacat")
    if binary is None:
        return Result("kcat", job.messages, None, 0.0,
                      note="no kcat on PATH (scripts/test-tools.sh installs it)")
    command = [binary, "-C", "-b", job.brokers, "-t", job.topic, "-e", "-o", "beginning", "-q"]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=job.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        return Result("kcat", job.messages, None, 0.0,
                      note=f"kcat exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    # peak RSS not measured (0): kcat exits as soon as it is done
    return Result("kcat", job.messages, seconds, 0.0, exact=True,
                  note=f"{' '.join(command[1:])} > /dev/null")


def quix(job: Job) -> Result:
    if not BENCH_PYTHON.exists():
        return Result("quix", job.messages, None, 0.0, note="no .bench-venv (see Makefile)")
    return run_child("quix", [str(BENCH_PYTHON), str(BENCH / "quix_app.py")], job)


def naive_faust(job: Job) -> Result:
    return run_child("faust-naive", [sys.executable, str(BENCH / "naive_faust.py"), "worker",
                                     "-l", "warn"], job)


class Sampler(threading.Thread):
    """Polls one URL-producing function in a loop, recording (monotonic time, answer)."""

    def __init__(self, fetch: Any, pause_s: float) -> None:
        super().__init__(daemon=True)
        self.fetch = fetch
        self.pause_s = pause_s
        self.samples: list[tuple[float, float, Any]] = []  # (started, finished, answer)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                answer = self.fetch()
            except OSError:
                answer = None
            self.samples.append((started, time.monotonic(), answer))
            self.halt.wait(self.pause_s)

    def stop(self) -> None:
        self.halt.set()
        if self.ident is not None:  # started
            self.join(30)


def reflected(health: dict[str, Any] | None) -> dict[int, int]:
    if not health:
        return {}
    return {int(p): -1 if v.get("offset") is None else int(v["offset"])
            for p, v in health.get("partitions", {}).items()}


def messages_in(offsets: dict[int, int]) -> int:
    """Messages up to and including ``offsets`` (partition -> last offset, -1 for none)."""
    return sum(offset + 1 for offset in offsets.values())


def bucket_app(job: Job, workers: int, expected: dict[Key, int], load: float,
               probe_s: float, live_s: float, sql_from: int, sql_pause: float,
               bucket_type: str = "epoch", label: str = "",
               msg_map: dict[str, str] | None = None, avro_schema: dict[str, Any] | None = None,
               skipped: dict[str, int] | None = None, sql: bool = True,
               registry: str | None = None, kernel: str | None = None) -> Result:
    """``workers`` bucket_app workers from the beginning of the topic: msg/s, then the live
    and latency phases (``live_s``, ``probe_s``; 0 skips them), exact against ``expected``
    (and, given ``skipped``, the first worker's skipped records by reason). ``sql``: the SQL
    queries during ingestion. ``msg_map``, ``avro_schema``, ``registry``, ``kernel``: see
    :func:`bucket_worker`."""
    name = f"bucket_app x{workers}" + (f" {bucket_type}" if bucket_type != "epoch" else "") + (
        f" {label}" if label else "") + (f" [{kernel}]" if kernel else "")
    app_id = f"bench-app-{uuid.uuid4().hex[:8]}"
    procs = [bucket_worker(job.workdir / f"{app_id}-{i}", job.brokers, job.topic, app_id,
                           len(job.ends), bucket_type, msg_map, avro_schema,
                           registry, kernel).start(wait=False)
             for i in range(workers)]
    try:
        result = _measure_bucket_app(name, procs, job, expected, load, probe_s, live_s,
                                     sql_from, sql_pause if sql else None)
        if skipped is not None and result.exact is not None:
            health = procs[0].poll_health()
            found = health["worker"]["skipped"] if health else None
            result.exact = result.exact and found == skipped
            result.note += f"; skipped {found} (expected {skipped})"
        return result
    finally:
        for worker in procs:
            worker.stop()


def _measure_bucket_app(name: str, procs: list[Worker], job: Job,
                        expected: dict[Key, int], load: float, probe_s: float, live_s: float,
                        sql_from: int, sql_pause: float | None) -> Result:
    """``sql_pause`` None: no SQL queries during ingestion."""
    first = procs[0]
    sql = (f"SELECT * FROM default WHERE server_name='s-1' AND bucket_start >= {sql_from}")
    sql_url = first.url + "/c/" + urllib.parse.quote(sql)
    sql_sampler = Sampler(lambda: http(sql_url).status, sql_pause or 0.0)
    targets = {p: end - 1 for p, end in job.ends.items() if end > 0}
    deadline = time.monotonic() + job.timeout_s
    started: float | None = None
    settled: tuple[float, int] | None = None  # (time, messages reflected) once the group settled
    drained: tuple[float, int] | None = None  # the same once the first partition was drained
    pids = [w.proc.pid for w in procs if w.proc is not None]
    cpu_settled: CpuMark | None = None
    cpu_drained: CpuMark | None = None
    # (time, records counted or skipped) at the first count, and when all were
    processed_from: tuple[float, int] | None = None
    processed_at: float | None = None
    while True:  # ingestion: wait for the first count, then for every partition's end offset
        if time.monotonic() > deadline or not all(w.alive() for w in procs):
            sql_sampler.halt.set()
            return Result(name, job.messages, None, _rss(procs),
                          note=f"did not finish; log tail:\n{first.tail(30)}")
        answers = [w.poll_health() for w in procs]
        now = time.monotonic()
        if started is None and any(a and a["worker"]["counted"] for a in answers):
            started = now
            processed_from = (now, _processed(answers))
        if settled is None and started is not None and _group_settled(answers, len(job.ends)):
            settled = (now, messages_in(reflected(answers[0])))
            cpu_settled = CpuMark.now(pids)
        if processed_from is not None and processed_at is None and (
                _processed(answers) >= job.messages):
            processed_at = now
        if sql_pause is not None and not sql_sampler.is_alive() and started is not None and (
                answers[0] and answers[0]["rst_id"]):
            sql_sampler.start()  # once the snapshot exists: earlier queries wait for it
        offsets = reflected(answers[0])
        if settled is not None and drained is None and any(
                offsets.get(p, -1) >= t for p, t in targets.items()):
            drained = (now, messages_in(offsets))
            cpu_drained = CpuMark.now(pids)
        if started is not None and all(offsets.get(p, -1) >= t for p, t in targets.items()):
            break
        time.sleep(0.1)
    snapshot_at = now
    sql_sampler.stop()
    sql_ms = [(done - t0) * 1000 for t0, done, status in sql_sampler.samples if status == 200]
    sql_failed = len(sql_sampler.samples) - len(sql_ms)
    # Throughput once every worker is ready with its share of the partitions: from the first
    # count it would include the start-up rebalance a second worker causes (also reported).
    overall = job.messages / (now - started)
    if settled is None or now - settled[0] < 2:
        # less what the workers had counted by then: a short backlog is half counted at the
        # first poll that shows a count
        assert processed_from is not None
        seconds, messages = now - started, job.messages - processed_from[1]
        window = f"from the first count ({messages} messages)"
    else:
        seconds, messages = now - settled[0], job.messages - settled[1]
        window = (f"after the group settled ({messages} messages; {overall:.0f} msg/s from the "
                  "first count)")
    drain_rate = messages / seconds
    counted_rate = None
    visible_after_s = None if processed_at is None else snapshot_at - processed_at
    if processed_from is not None and processed_at is not None and (
            processed_at - processed_from[0] >= 0.5):
        counted_rate = (job.messages - processed_from[1]) / (processed_at - processed_from[0])
    busy_rate, busy, busy_cores = None, "", None
    if settled is not None and drained is not None and drained[0] - settled[0] >= 2:
        busy_rate = (drained[1] - settled[1]) / (drained[0] - settled[0])
        assert cpu_settled is not None and cpu_drained is not None
        busy_cores = cpu_drained.cores_since(cpu_settled)
        busy = (f"{busy_rate:.0f} msg/s until the first partition was drained "
                f"({drained[0] - settled[0]:.1f} s; cores busy: machine "
                f"{busy_cores['machine_cores']:.2f} of {os.cpu_count()}, workers "
                f"{busy_cores['tree_cores']:.2f}); ")
    live_rate, kept_up, produced = _live_phase(procs, job, expected, LIVE_LOAD * drain_rate,
                                               live_s)
    sustained = live_rate if live_rate is not None else drain_rate
    latency, latency_at, probes = _latency_phase(first, job, expected, load * sustained, probe_s)
    drain_latency: list[float] = []
    if live_rate is not None and probe_s > 0:  # also at the load fraction of the backlog rate
        drain_latency, _, drain_probes = _latency_phase(first, job, expected, load * drain_rate,
                                                        probe_s)
    exact = _exact(procs, job, expected)
    live = ("" if live_rate is None else
            f"live: produced {produced:.0f} msg/s for {live_s:.0f} s, counted {live_rate:.0f} "
            f"msg/s{' (kept up: a lower bound)' if kept_up else ''}; ")
    drain = ("" if not drain_latency else
             f"; at {load:.0%} of the backlog rate ({load * drain_rate:.0f} msg/s): latency ms "
             f"p50 {percentile(drain_latency, 50):.0f}, p99 {percentile(drain_latency, 99):.0f},"
             f" {len(drain_latency)}/{drain_probes} probes seen")
    queries = ("" if sql_pause is None else
               f"{len(sql_ms)} SQL queries during ingestion, {sql_failed} not 200; ")
    lat = ("" if probe_s <= 0 else
           f"latency at {load * sustained:.0f} msg/s ({load:.0%} of the "
           f"{'live' if live_rate is not None else 'backlog'} rate) for {probe_s:.0f} s: "
           f"{len(latency)}/{probes} probes seen within 30 s")
    counted = ("" if counted_rate is None else
               f"{counted_rate:.0f} msg/s until every record was counted or skipped; ")
    return Result(name, messages, seconds, _rss(procs), latency_ms=latency,
                  latency_at_s=latency_at, sql_ms=sql_ms, live_rate=live_rate,
                  live_kept_up=kept_up, drain_latency_ms=drain_latency, busy_rate=busy_rate,
                  counted_rate=counted_rate, visible_after_s=visible_after_s,
                  busy_cores=busy_cores, exact=exact,
                  note=f"msg/s {window}; {busy}{queries}{live}{counted}{lat}{drain}".rstrip("; "))


def _live_phase(procs: list[Worker], job: Job, expected: dict[Key, int], rate: float,
                live_s: float) -> tuple[float | None, bool, float]:
    """The rate at which counts become visible while messages are produced live, faster than
    that (at the backlog rate, LIVE_LOAD).

    The sustained rate of a stream processor is the input rate it keeps up with: here the
    harness's producer and the broker's produce path share the 2 cores with the workers, as in
    the latency phase, which a backlog drained with nothing produced does not show. Produces
    at ``rate`` for ``live_s`` s and measures, over its last two thirds, how fast the first
    worker's snapshot reflects offsets (as the backlog rate is measured: counted, in the
    changelog and visible). Then waits for the workers to catch up. Returns (msg/s, whether
    the workers kept up with the producer, produced msg/s); (None, False, 0) if not measured.
    """
    if live_s <= 0:
        return None, False, 0.0

    def visible() -> int | None:
        offsets = reflected(procs[0].poll_health())
        return messages_in(offsets) if offsets else None

    before = sum(expected.values())
    sampler = Sampler(visible, 0.25)
    sampler.start()
    started = time.monotonic()
    probes: list[Probe] = asyncio.run(
        produce_steady(job.brokers, job.topic, len(job.ends), rate, live_s, expected))
    ended = time.monotonic()
    produced = (sum(expected.values()) - before) / (ended - started)
    sampler.stop()
    window = [(t, n) for t, _, n in sampler.samples
              if n is not None and started + live_s / 3 <= t <= ended]
    _await_probes(procs[0], job, probes)
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return None, False, produced
    live = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
    return live, live >= 0.97 * produced, produced


def _await_probes(worker: Worker, job: Job, probes: list[Probe]) -> None:
    """Wait (at most 60 s) until ``worker``'s snapshot reflects every probe; record them."""
    last = {p.partition: p.offset for p in probes}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = reflected(worker.poll_health())
        if all(seen.get(p, -1) >= off for p, off in last.items()):
            break
        time.sleep(0.2)
    _record_probes(job, probes)


def _record_probes(job: Job, probes: list[Probe]) -> None:
    """The topic now ends after the probes: the exactness check waits for them too."""
    for probe in probes:
        job.ends[probe.partition] = max(job.ends.get(probe.partition, 0), probe.offset + 1)


def _processed(answers: list[dict[str, Any] | None]) -> int:
    """Records the workers counted or skipped, from their /health answers."""
    return sum(a["worker"]["counted"] + sum(a["worker"]["skipped"].values())
               for a in answers if a)


def _group_settled(answers: list[dict[str, Any] | None], partitions: int) -> bool:
    """Every worker answers, is ready, fetches its own partitions and together they fetch all."""
    owned: list[int] = []
    for answer in answers:
        if not answer or not answer["worker"]["ready"] or not answer["worker"]["fetching"]:
            return False
        owned.extend(answer["worker"]["fetching"])
    return sorted(owned) == list(range(partitions)) and bool(answers[0] and answers[0]["rst_id"])


def _latency_phase(worker: Worker, job: Job, expected: dict[Key, int],
                   rate: float, probe_s: float) -> tuple[list[float], list[float], int]:
    """Produce at ``rate`` msg/s; per batch, time from its ack to the snapshot showing it, and
    when in the phase it was acknowledged."""
    if probe_s <= 0:
        return [], [], 0
    health = KeepAlive(worker.url)
    watcher = Sampler(lambda: reflected(health.get_json("/health")), 0.02)
    watcher.start()
    phase_started = time.monotonic()
    probes: list[Probe] = asyncio.run(
        produce_steady(job.brokers, job.topic, len(job.ends), rate, probe_s, expected))
    last = {p.partition: p.offset for p in probes}  # probes are acked in offset order
    wait_until = time.monotonic() + 30  # a probe not seen by then is reported, not hidden
    while time.monotonic() < wait_until:
        seen = watcher.samples[-1][2] if watcher.samples else None
        if seen and all(seen.get(p, -1) >= off for p, off in last.items()):
            break
        time.sleep(0.1)
    watcher.stop()
    latencies, at = [], []
    for probe in probes:
        for _, done, offsets in watcher.samples:
            if done >= probe.acked and offsets and offsets.get(probe.partition, -1) >= probe.offset:
                latencies.append((done - probe.acked) * 1000)
                at.append(probe.acked - phase_started)
                break
    _record_probes(job, probes)
    return latencies, at, len(probes)


def _exact(procs: list[Worker], job: Job, expected: dict[Key, int]) -> bool:
    """Every replica's snapshot, once it reflects every offset produced (each replica's
    snapshot catches up on its own), equals the harness's counts."""
    deadline = time.monotonic() + 60
    targets = {p: end - 1 for p, end in job.ends.items() if end > 0}
    waiting = list(procs)
    while waiting and time.monotonic() < deadline:
        offsets = reflected(waiting[0].poll_health())
        if all(offsets.get(p, -1) >= t for p, t in targets.items()):
            waiting.pop(0)
        else:
            time.sleep(0.2)
    ok = True
    for worker in procs:
        rows = http_json(worker.url + "/a/default", timeout=60)
        found = {(r["server_name"], r["topic"], r["bucket_start"]): r["count"] for r in rows}
        ok = ok and found == expected
    return ok


def _rss(procs: list[Worker]) -> float:
    return sum(peak_rss_mb(w.proc.pid) for w in procs if w.proc is not None)


def bucket_app_sql(brokers: str, partitions: int, rows: int, backlog: int, workdir: Path,
                   sql_pause: float, timeout_s: float) -> Result:
    """SQL latency over a snapshot of ``rows`` rows while the worker ingests at full rate.

    One worker builds the snapshot from ``rows`` single-message window-keys; then ``backlog``
    more messages are produced while it is paused, and a typical filtered /c/ query runs every
    ``sql_pause`` s while it counts them. Exactness is checked with count(*) and sum(count).
    """
    name = SQL_CONTENDER
    topic = f"bench-sql-{uuid.uuid4().hex[:8]}"
    create_topic(topic, partitions, brokers=brokers)
    expected, first = asyncio.run(preload_distinct(brokers, topic, rows))
    worker = bucket_worker(workdir / "bucket_app-sql", brokers, topic,
                           f"bench-sql-{uuid.uuid4().hex[:8]}", partitions).start(wait=False)
    count_sql = "SELECT count(*) AS n, sum(count) AS total FROM default"
    try:
        deadline = time.monotonic() + timeout_s
        built = _wait_rows(worker, count_sql, len(expected), sum(expected.values()), deadline)
        if built is None:
            return Result(name, rows, None, _rss([worker]),
                          note=f"snapshot of {rows} rows not built; log tail:\n{worker.tail(30)}")
        recent = first + (rows // (SERVERS * TOPICS) - 60) * BUCKET_S
        sql = f"SELECT * FROM default WHERE server_name='s-1' AND bucket_start >= {recent}"
        sql_url = worker.url + "/c/" + urllib.parse.quote(sql)
        sampler = Sampler(lambda: http(sql_url).status, sql_pause)
        # The backlog is produced while the worker is stopped (SIGSTOP, about 5 s: inside its
        # 15 s session timeout, or the group rebalances), so the queries then run while it
        # ingests as fast as it can, and not against the harness's producer for the 2 cores.
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGSTOP)
        try:
            more = asyncio.run(preload_quickly(brokers, topic, backlog, partitions, seed=9))
        finally:
            worker.proc.send_signal(signal.SIGCONT)
        for key, n in more.items():
            expected[key] = expected.get(key, 0) + n
        t0 = time.monotonic()
        sampler.start()
        ends = end_offsets(topic, partitions, brokers=brokers)
        targets = {p: end - 1 for p, end in ends.items() if end > 0}
        while not all(reflected(worker.poll_health()).get(p, -1) >= t for p, t in targets.items()):
            if time.monotonic() > deadline or not worker.alive():
                sampler.stop()
                return Result(name, rows, None, _rss([worker]),
                              note=f"backlog not counted; log tail:\n{worker.tail(30)}")
            time.sleep(0.1)
        seconds = time.monotonic() - t0
        sampler.stop()
        sql_ms = [(done - t0) * 1000 for t0, done, status in sampler.samples if status == 200]
        failed = len(sampler.samples) - len(sql_ms)
        final = _wait_rows(worker, count_sql, len(expected), sum(expected.values()),
                           time.monotonic() + 60)
        return Result(name, backlog, seconds, _rss([worker]), sql_ms=sql_ms,
                      exact=final is not None,
                      note=f"{built} rows, then {backlog} messages; {len(sql_ms)} queries "
                      f"during ingestion, {failed} not 200")
    finally:
        worker.stop()


def _wait_rows(worker: Worker, count_sql: str, rows: int, total: int,
               deadline: float) -> int | None:
    """Wait until the snapshot holds ``rows`` rows summing to ``total``; return the rows."""
    url = worker.url + "/c/" + urllib.parse.quote(count_sql)
    while time.monotonic() < deadline and worker.alive():
        try:
            answer = http_json(url, timeout=30)
        except OSError:
            answer = None
        if answer and answer[0]["n"] == rows and answer[0]["total"] == total:
            return rows
        time.sleep(0.5)
    return None
