"""The worker's web app in a test: the real routes and runner, on a Faust app never started.

:func:`build_app` registers the routes (``routes.register``) over a snapshot reader that has
caught up with an empty changelog and the agent's counters; :func:`running` serves them on a
free loopback port with ``middleware.make_runner``, the runner the worker serves with, and
starts and stops the SQL child processes as the worker does. :func:`serve_snapshot` does both
over a snapshot of given rows with the late and final columns. :func:`client` binds to a chosen
loopback address (the whole 127/8 range answers on Linux), so tests can be several clients.
:func:`assert_error_shape` pins the project's one JSON error shape. No broker is contacted.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import faust
from aiohttp import web as aioweb

from bucket_app.kafka.recovery import RecoveryProgress
from bucket_app.parts import sql_parts
from bucket_app.settings import Settings, load
from bucket_app.snapshot.reader import SnapshotReader
from bucket_app.web import middleware, routes
from bucket_app.web.metrics import ConsumerLag, build_registry
from bucket_app.web.service import Service
from tests.support.settings import SEED_INI, write_config

TIME_LIMIT_S = 0.5
PARTITIONS = 2


def assert_error_shape(body: Any, status: int) -> None:
    """The project's one error shape: {"error": <text>, "status": <the HTTP status>, ...}."""
    assert isinstance(body, dict), body
    assert isinstance(body["error"], str) and body["error"], body
    assert body["status"] == status, body


@dataclass
class Served:
    url: str
    service: Service
    port: int


def make_settings(tmp_path: Path, **extra: str) -> Settings:
    ini = SEED_INI.replace("sqlite_db = :memory:", f"sqlite_db = {tmp_path}/snap.sqlite3")
    ini += f"sql_time_limit = {TIME_LIMIT_S}s\n"
    ini += "".join(f"{key} = {value}\n" for key, value in extra.items())
    return load(write_config(tmp_path, ini), {})


def build_app(settings: Settings) -> tuple[faust.App, Service]:
    """The worker's web app: routes, middlewares and runner, on a Faust app never started;
    the service's SQL pool and threads as the worker builds them (not started)."""
    app = faust.App(f"test-web-{uuid.uuid4().hex[:8]}", web_in_thread=True)
    reader = SnapshotReader(settings, PARTITIONS, store=None)
    # a snapshot that has caught up with an empty changelog
    reader.state.started = True
    reader.state.generation = 1
    reader.state.changelog = {p: (0, 0) for p in range(PARTITIONS)}
    # the agent's counters, which the views only report
    processor: Any = SimpleNamespace(
        counter=SimpleNamespace(batches=0, counted=0, replayed=0, late=0, dead_letters=0,
                                skipped={}),
        assignment={"ready": True})
    sql, threads, processes = sql_parts(settings)
    service = Service(settings, reader, processor, sql, threads, processes)
    routes.register(app, service, build_registry(
        service, ConsumerLag(settings.topic), RecoveryProgress()))
    return app, service


@contextlib.asynccontextmanager
async def running(app: faust.App, service: Service) -> AsyncIterator[tuple[str, Any]]:
    """The views of ``build_app`` served on a free loopback port: (base URL, runner)."""
    service.sql.start()  # as the worker does at start-up
    runner = middleware.make_runner(app.web.web_app)  # type: ignore[attr-defined]
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", runner
    finally:
        await runner.cleanup()
        service.sql.close()
        service.threads.shutdown(wait=False, cancel_futures=True)


def client(address: str = "127.0.0.1", **headers: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0), force_close=True),
        headers=headers, timeout=aiohttp.ClientTimeout(total=30))


# --- a snapshot with the late and final columns ---------------------------------------------

INTERVAL = 20  # the test settings' bucket_interval


def ts(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def make_snapshot(path: Path, rows: Sequence[tuple[Any, ...]]) -> sqlite3.Connection:
    """A WAL-mode snapshot table as the worker writes it, with the late and final columns."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute('CREATE TABLE "default" (server_name TEXT, topic TEXT, bucket_start INTEGER, '
                 "bucket_end INTEGER, count INTEGER, RST_ID INTEGER, late INTEGER, "
                 "final INTEGER)")
    conn.executemany('INSERT INTO "default" VALUES (?, ?, ?, ?, ?, ?, ?, ?)', rows)
    return conn


def dst_rows(seed: int, lo: int, hi: int, step: int = 1200) -> list[tuple[Any, ...]]:
    """Buckets every ``step`` seconds of [lo, hi), for a few servers and topics, random
    counts, late counts and finality."""
    rng = random.Random(seed)
    rows = []
    for start in range(lo, hi, step):
        for server in ("s0", "s1", None):
            if rng.random() < 0.3:
                continue
            topic = rng.choice(["t0", "t1"])
            rows.append((server, topic, start, start + INTERVAL, rng.randrange(1, 9), 1,
                         rng.randrange(3), int(rng.random() < 0.95)))
    return rows


@contextlib.asynccontextmanager
async def serve_snapshot(tmp_path: Path, rows: Sequence[tuple[Any, ...]],
                         **extra: str) -> AsyncIterator[Served]:
    """The real views, on the worker's runner, over a snapshot of ``rows`` with the late and
    final columns; 20 s buckets, settings ``extra``."""
    writer = make_snapshot(tmp_path / "snap.sqlite3", rows)
    app, service = build_app(make_settings(tmp_path, **extra))
    try:
        async with running(app, service) as (url, runner):
            yield Served(url, service, runner.addresses[0][1])
    finally:
        writer.close()
