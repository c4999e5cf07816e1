"""GET /metrics: what the collector reads, the text prometheus_client's own parser reads back,
the per-app registry, the recovery progress lines, and the route behind the token.

The route tests run the real views (``web.register`` on a Faust app that is never started) on
the worker's runner, over a real SQLite snapshot and real SQL child processes, as
``test_web_limits`` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiohttp import web as aioweb
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bucket_app.kafka import recovery as recovery_module
from bucket_app.kafka.recovery import RecoveryProgress, duration
from bucket_app.web import metrics
from bucket_app.web.metrics import ConsumerLag, build_registry
from bucket_app.web.middleware import make_runner
from tests.support.sqlite import make_db
from tests.support.web import build_app, client, make_settings

SOURCE = "source-topic"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels), as Prometheus would read it."""
    found = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"sample {key} twice"
            found[key] = sample.value
    return found


def ours(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of bucket_app's own metrics (the histogram's ``_created`` aside)."""
    return {k: v for k, v in samples(text).items()
            if k[0].startswith("bucket_app_") and not k[0].endswith("_created")}


def fake_service(counter: Any, state: Any) -> Any:
    """What the collector reads of :class:`~bucket_app.web.service.Service`."""
    return SimpleNamespace(processor=SimpleNamespace(counter=counter),
                           reader=SimpleNamespace(state=state), on_query=None)


# --- the collector and its exposition ----------------------------------------------------------

def test_exposition_reads_the_live_values_at_scrape_time() -> None:
    counter = SimpleNamespace(counted=7, skipped=Counter(not_json=2, empty=1), late=3,
                              dead_letters=1)
    state = SimpleNamespace(generation=4, refreshed_at_s=1000.0, rows=12)
    lag, recovery = ConsumerLag(SOURCE), RecoveryProgress()
    lag.lag = {3: 0, 0: 5}
    recovery.remaining = {1: 10, 0: 0}
    registry = build_registry(fake_service(counter, state), lag, recovery, clock=lambda: 1002.5)
    found = ours(generate_latest(registry).decode())
    hist = {k: v for k, v in found.items() if k[0].startswith("bucket_app_sql_query_seconds")}
    assert hist[("bucket_app_sql_query_seconds_count", ())] == 0
    assert {k: v for k, v in found.items() if k not in hist} == {
        ("bucket_app_messages_counted_total", ()): 7,
        ("bucket_app_messages_skipped_total", (("reason", "empty"),)): 1,
        ("bucket_app_messages_skipped_total", (("reason", "not_json"),)): 2,
        ("bucket_app_messages_late_total", ()): 3,
        ("bucket_app_dead_letters_total", ()): 1,
        ("bucket_app_consumer_lag", (("partition", "0"),)): 5,
        ("bucket_app_consumer_lag", (("partition", "3"),)): 0,
        ("bucket_app_snapshot_age_seconds", ()): 2.5,
        ("bucket_app_snapshot_rows", ()): 12,
        ("bucket_app_snapshot_generation", ()): 4,
        ("bucket_app_recovery_remaining", (("partition", "0"),)): 0,
        ("bucket_app_recovery_remaining", (("partition", "1"),)): 10,
    }
    # counted later is scraped later: nothing is mirrored
    counter.counted += 5
    counter.skipped["expired"] += 1
    state.generation = 5
    lag.lag = {}
    found = ours(generate_latest(registry).decode())
    assert found[("bucket_app_messages_counted_total", ())] == 12
    assert found[("bucket_app_messages_skipped_total", (("reason", "expired"),))] == 1
    assert found[("bucket_app_snapshot_generation", ())] == 5
    assert not any(name == "bucket_app_consumer_lag" for name, _ in found)


def test_values_not_known_yet_are_left_out_not_zero() -> None:
    # an agent without the late and dead-letter counters, a snapshot never refreshed and a
    # reader state without a row count
    counter = SimpleNamespace(counted=0, skipped=Counter())
    state = SimpleNamespace(generation=0, refreshed_at_s=0.0)
    registry = build_registry(fake_service(counter, state), ConsumerLag(SOURCE),
                              RecoveryProgress())
    names = {name for name, _ in ours(generate_latest(registry).decode())}
    assert names == {
        "bucket_app_messages_counted_total", "bucket_app_messages_late_total",
        "bucket_app_dead_letters_total", "bucket_app_snapshot_generation",
        "bucket_app_sql_query_seconds_bucket", "bucket_app_sql_query_seconds_count",
        "bucket_app_sql_query_seconds_sum",
    }
    text = generate_latest(registry).decode()
    # every family is still described, with its type
    assert "# TYPE bucket_app_consumer_lag gauge" in text
    assert "# TYPE bucket_app_messages_skipped_total counter" in text


def test_on_query_feeds_the_sql_histogram() -> None:
    service = fake_service(SimpleNamespace(counted=0, skipped=Counter()),
                           SimpleNamespace(generation=0, refreshed_at_s=0.0))
    registry = build_registry(service, ConsumerLag(SOURCE), RecoveryProgress())
    for seconds in (0.0004, 0.003, 0.003, 1.7):
        service.on_query(seconds)
    found = ours(generate_latest(registry).decode())

    def bucket(le: str) -> float:
        return found[("bucket_app_sql_query_seconds_bucket", (("le", le),))]

    assert found[("bucket_app_sql_query_seconds_count", ())] == 4
    assert found[("bucket_app_sql_query_seconds_sum", ())] == pytest.approx(1.7064)
    assert (bucket("0.0005"), bucket("0.0025"), bucket("0.005"), bucket("1.0"),
            bucket("2.5"), bucket("+Inf")) == (1, 1, 3, 3, 4, 4)


def test_an_app_built_twice_in_one_process_has_two_registries(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first_app, first = build_app(settings)
    second_app, second = build_app(settings)  # no "Duplicated timeseries"
    try:
        first.on_query(0.01)
        assert first.on_query != second.on_query
    finally:
        for service in (first, second):
            service.threads.shutdown(wait=False)


# --- recovery progress -------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_recovery_logs_a_start_line_progress_every_few_seconds_and_an_end_line() -> None:
    clock = Clock()
    progress = RecoveryProgress(log_every_s=5.0, clock=clock)
    assert progress.observe(False, {"counts": {0: 0, 1: 0}}) == []  # nothing to restore
    assert progress.observe(True, {"counts": {}}) == []  # highwaters not built yet
    assert progress.observe(True, {"counts": {0: 600_000, 1: 400_000}},
                            {"counts": 1_000_000}) == [
        "bucket_app: recovering table counts: 0/1,000,000 records (0%)"]
    assert progress.remaining == {0: 600_000, 1: 400_000}
    clock.now += 2
    assert progress.observe(True, {"counts": {0: 550_000, 1: 400_000}}) == []  # not due yet
    clock.now += 3
    assert progress.observe(True, {"counts": {0: 480_000, 1: 400_000}}) == [
        "bucket_app: recovering table counts: 120,000/1,000,000 records (12%), 24,000/s, "
        "~37 s left"]
    assert progress.remaining == {0: 480_000, 1: 400_000}
    clock.now += 5
    assert progress.observe(True, {"counts": {0: 0, 1: 0}}) == [
        "bucket_app: recovered table counts: 1,000,000 records in 10 s, 100,000/s"]
    assert progress.remaining == {0: 0, 1: 0}
    clock.now += 5
    assert progress.observe(False, {"counts": {0: 0, 1: 0}}) == []  # one end line only


def test_a_bulk_restore_logs_as_recovery_does_and_adds_to_the_gauge(caplog) -> None:
    clock = Clock()
    progress = RecoveryProgress(log_every_s=5.0, clock=clock)
    progress.observe(False, {"counts": {0: 0, 2: 7}})  # Faust's view: 7 left on partition 2
    with caplog.at_level(logging.INFO, logger="bucket_app.kafka.recovery"):
        progress.restoring("counts", {0: 0, 1: 0})  # nothing to read: no run, no line
        progress.restoring("counts", {0: 300_000, 1: 100_000})
        assert progress.remaining == {0: 300_000, 1: 100_000, 2: 7}
        clock.now += 4
        progress.restoring("counts", {0: 200_000, 1: 100_000})  # not due yet
        clock.now += 1
        progress.restoring("counts", {0: 100_000, 1: 50_000})
        clock.now += 3
        progress.restoring("counts", {})
    assert [r.getMessage() for r in caplog.records] == [
        "bucket_app: recovering table counts: 0/400,000 records (0%)",
        "bucket_app: recovering table counts: 250,000/400,000 records (62%), 50,000/s, "
        "~3 s left",
        "bucket_app: recovered table counts: 400,000 records in 8 s, 50,000/s"]
    assert progress.remaining == {0: 0, 2: 7}


def test_a_recovery_first_seen_part_done_counts_what_was_restored_before() -> None:
    clock = Clock()
    progress = RecoveryProgress(log_every_s=5.0, clock=clock)
    assert progress.observe(True, {"counts": {0: 58_316}}, {"counts": 60_004}) == [
        "bucket_app: recovering table counts: 1,688/60,004 records (2%)"]
    clock.now += 5
    # the rate is of what was seen restored: 40,000 records in 5 s
    assert progress.observe(True, {"counts": {0: 18_316}}) == [
        "bucket_app: recovering table counts: 41,688/60,004 records (69%), 8,000/s, ~2 s left"]
    clock.now += 2.5
    assert progress.observe(False, {"counts": {0: 0}}) == [
        "bucket_app: recovered table counts: 60,004 records in 8 s, 7,775/s"]


def test_a_recovery_that_grows_or_ends_early_says_so() -> None:
    clock = Clock()
    progress = RecoveryProgress(log_every_s=5.0, clock=clock)
    progress.observe(True, {"counts": {0: 100}})
    clock.now += 5
    # a rebalance started another recovery: more to restore than the first one had
    assert progress.observe(True, {"counts": {0: 150}}, {"counts": 150}) == [
        "bucket_app: recovering table counts: 0/150 records (0%)"]
    clock.now += 5
    assert progress.observe(True, {"counts": {0: 75}}) == [
        "bucket_app: recovering table counts: 75/150 records (50%), 15/s, ~5 s left"]
    clock.now += 1
    # Faust ended this recovery (another rebalance) with records left
    assert progress.observe(False, {"counts": {0: 70}}) == [
        "bucket_app: recovered table counts: 80 records in 6 s, 13/s"]


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (22.4, "22 s"), (59.6, "1 min"), (185, "3 min 5 s"), (3600, "1 h"),
    (7800, "2 h 10 min"), (-3, "0 s"),
])
def test_durations_read_as_a_person_would_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


async def test_sample_reads_fausts_recovery_service(caplog: pytest.LogCaptureFixture) -> None:
    """Against Faust's own Recovery class: the names this module reads are there, and a run's
    total follows Faust's rule for where reading starts."""
    app = faust.App("test-metrics-recovery")
    recovery = app.tables.recovery
    table = SimpleNamespace(name="counts")
    wiped, kept = TP("state-counts-changelog", 0), TP("state-counts-changelog", 1)
    for tp in (wiped, kept):
        recovery.tp_to_table[tp] = table
    # as Faust's on_rebalance leaves them: the local tables' offsets (none: wiped)
    recovery.active_offsets[wiped], recovery.active_offsets[kept] = None, 40
    progress = RecoveryProgress()
    progress.on_assigned(recovery)
    # Faust then reads on from max(table offset, earliest - 1): 15 records restored so far
    recovery.active_highwaters[wiped], recovery.active_highwaters[kept] = 99, 49
    recovery.active_offsets[wiped], recovery.active_offsets[kept] = 9, 45
    recovery.in_recovery = True

    class Consumer:
        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            assert set(tps) == {wiped, kept}
            return {tp: 0 for tp in tps}

    with caplog.at_level(logging.INFO, logger=recovery_module.__name__):
        await progress.sample(recovery, Consumer())
    assert progress.remaining == {0: 90, 1: 4}
    # (99 - -1) + (49 - 40) records in all, 94 left
    assert caplog.messages == ["bucket_app: recovering table counts: 15/109 records (13%)"]


# --- consumer lag ------------------------------------------------------------------------------

class StandInConsumer:
    """Faust's consumer methods the lag sampler calls, with positions the test picks (a real
    consumer's lag is checked against the broker in tests/integration/test_metrics.py)."""

    def __init__(self, highs: dict[TP, int | None], positions: dict[TP, Any]) -> None:
        self.highs = highs
        self.positions = positions

    def assignment(self) -> set[TP]:
        return set(self.highs)

    def highwater(self, tp: TP) -> int | None:
        return self.highs[tp]

    async def position(self, tp: TP) -> int | None:
        answer = self.positions[tp]
        if isinstance(answer, Exception):
            raise answer
        if answer == "never":
            await asyncio.Event().wait()
        return answer  # type: ignore[no-any-return]


async def test_lag_is_high_watermark_minus_position_of_assigned_source_partitions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "POSITION_TIMEOUT_S", 0.05)
    src = [TP(SOURCE, p) for p in range(6)]
    other = TP("state-counts-changelog", 0)
    consumer = StandInConsumer(
        {src[0]: 100, src[1]: 50, src[2]: None, src[3]: 10, src[4]: 10, src[5]: 7, other: 900},
        {src[0]: 60, src[1]: 50, src[2]: 0, src[3]: "never", src[4]: RuntimeError("revoked"),
         src[5]: 9, other: 0})
    lag = ConsumerLag(SOURCE)
    await lag.sample(consumer)
    # 2: not fetched yet; 3: position unknown; 4: taken away; 5: fetched before the position
    assert lag.lag == {0: 40, 1: 0, 5: 0}


async def test_lag_is_empty_when_the_consumer_cannot_say() -> None:
    class NotStarted:
        def assignment(self) -> set[TP]:
            raise RuntimeError("Consumer thread not yet started")

    lag = ConsumerLag(SOURCE)
    lag.lag = {0: 3}
    await lag.sample(NotStarted())
    assert lag.lag == {}


# --- the route ---------------------------------------------------------------------------------

@pytest.fixture
def settings_extra() -> dict[str, str]:
    return {}


@pytest.fixture
async def served(tmp_path: Path, settings_extra: dict[str, str]) -> AsyncIterator[str]:
    writer = make_db(tmp_path / "snap.sqlite3", "default",
                     [(f"s-{i}", "t", i * 20, i * 20 + 20, 1, 1) for i in range(5)])
    app, service = build_app(make_settings(tmp_path, **settings_extra))
    service.sql.start()
    runner = make_runner(app.web.web_app)  # type: ignore[attr-defined]
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        service.sql.close()
        service.threads.shutdown(wait=False, cancel_futures=True)
        writer.close()


async def scrape(session: Any, url: str) -> tuple[int, str, str]:
    async with session.get(url + "/metrics") as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_metrics_route_serves_the_text_format_and_times_sql(served: str) -> None:
    async with client() as session:
        status, content_type, text = await scrape(session, served)
        assert (status, content_type) == (200, CONTENT_TYPE_LATEST)
        before = ours(text)
        assert before[("bucket_app_snapshot_generation", ())] == 1
        assert before[("bucket_app_sql_query_seconds_count", ())] == 0
        async with session.get(served + "/api/v1/sql?q=SELECT%20count(*)%20FROM%20%22default%22"
                               ) as answer:
            assert answer.status == 200
        after = ours((await scrape(session, served))[2])
        assert after[("bucket_app_sql_query_seconds_count", ())] == 1
        assert after[("bucket_app_sql_query_seconds_sum", ())] > 0


@pytest.mark.parametrize("settings_extra", [{"http_token": "s3cret-token"}])
async def test_metrics_needs_the_token_like_every_route_but_health(served: str) -> None:
    async with client() as anonymous, client(Authorization="Bearer wrong") as wrong, \
            client(Authorization="Bearer s3cret-token") as right:
        for session in (anonymous, wrong):
            async with session.get(served + "/metrics") as answer:
                assert answer.status == 401
                assert answer.headers["WWW-Authenticate"] == "Bearer"
                body = await answer.json()
                assert body["status"] == 401 and body["error"]
        status, content_type, text = await scrape(right, served)
        assert (status, content_type) == (200, CONTENT_TYPE_LATEST)
        assert ("bucket_app_messages_counted_total", ()) in ours(text)
