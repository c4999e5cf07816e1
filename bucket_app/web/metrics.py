"""GET /metrics: the worker's counters and gauges in Prometheus' text format; table recovery's
progress in the log.

Each app has its own :class:`~prometheus_client.CollectorRegistry`, never prometheus_client's
process-wide default, so an app built twice in one process (as the tests do) registers its
metrics twice without a clash. Counts are not mirrored into prometheus_client counters:
:class:`WorkerCollector` reads the agent's counters and the snapshot reader's state when scraped,
so /metrics and /health report the same numbers. The one metric kept by prometheus_client itself
is the SQL query-time histogram, fed by :attr:`bucket_app.web.service.Service.on_query`.

The web server answers from its own thread and event loop, while Faust's consumer and its table
recovery live on the worker's main loop, and touching them from another thread can bind Faust's
lazily created services to the wrong loop. So the two values that come from them, the consumer
lag (:class:`ConsumerLag`) and the changelog records left to restore (:class:`RecoveryProgress`),
are sampled on the main loop, as the agent's assignment is, and the collector reads the last
sample (:mod:`bucket_app.kafka.recovery` also logs a recovery's progress). The worker runs
those samplers (:mod:`bucket_app.parts`); this module only reads them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web as aioweb
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bucket_app.kafka import brokerlog
from bucket_app.kafka.recovery import RecoveryProgress
from bucket_app.web.declare import Args, Group, Route
from bucket_app.web.schemas import TEXT
from bucket_app.web.service import Service

log = logging.getLogger(__name__)

PREFIX = "bucket_app_"
# How often the consumer lag is sampled: its figures are a second old at most.
LAG_SAMPLE_S = 1.0
# A partition whose position is not known yet (Faust has not sought it since it was assigned)
# has no lag until it is: aiokafka's position() waits for it, and a sample must not.
POSITION_TIMEOUT_S = 0.5
# How often recovery is sampled, and how often a recovery under way logs its progress.
# SQL query time: sub-millisecond lookups up to the time limit's order (sql_time_limit, 2 s
# by default).
SQL_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 5.0, 10.0)


class ConsumerLag:
    """This worker's lag per assigned partition of the source topic: the high watermark at the
    consumer's last fetch minus its position (the next offset to count), as Kafka's own
    ``records-lag`` is. Partitions another worker counts are not here: each worker reports its
    own, and the sum over workers is the group's lag."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        #: source partition -> records not yet counted; replaced whole by each sample
        self.lag: dict[int, int] = {}

    async def sample(self, consumer: Any) -> None:
        """Sample Faust's consumer (main loop only). Partitions without a high watermark (not
        fetched yet: paused while tables recover) or a position are left out."""
        try:
            tps = sorted((tp for tp in consumer.assignment() if tp.topic == self.topic),
                         key=lambda tp: tp.partition)
            highs = {tp: consumer.highwater(tp) for tp in tps}
            positions = await asyncio.gather(*(self._position(consumer, tp) for tp in tps))
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the worker
            # not started, or a rebalance took the partitions away: the next sample will do
            log.debug("consumer lag not sampled: %r", exc)
            self.lag = {}
            return
        self.lag = {tp.partition: max(highs[tp] - position, 0)
                    for tp, position in zip(tps, positions, strict=True)
                    if highs[tp] is not None and position is not None}

    @staticmethod
    async def _position(consumer: Any, tp: Any) -> int | None:
        try:
            position = await asyncio.wait_for(consumer.position(tp), POSITION_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - unknown now; the next sample asks again
            log.debug("no position for %s: %r", tp, exc)
            return None
        return None if position is None else int(position)


_COUNTER, _GAUGE = "counter", "gauge"
#: Every metric of :class:`WorkerCollector`: name (after PREFIX) -> type, help, labels.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "messages_counted": (
        _COUNTER, "Source messages counted into buckets by this worker.", ()),
    "messages_skipped": (
        _COUNTER, "Source messages skipped as bad input, by reason.", ("reason",)),
    "messages_late": (
        _COUNTER, "Source messages counted into a bucket already final (after its grace).",
        ()),
    "dead_letters": (
        _COUNTER, "Skipped source messages sent to the dead-letter topic.", ()),
    "consumer_lag": (
        _GAUGE, "Messages of this worker's source partitions not counted yet (high watermark "
        "at the last fetch minus the consumer's position).", ("partition",)),
    "snapshot_age_seconds": (
        _GAUGE, "Seconds since the SQLite snapshot was last refreshed.", ()),
    "snapshot_rows": (_GAUGE, "Rows of the SQLite snapshot table.", ()),
    "snapshot_generation": (
        _GAUGE, "The snapshot's generation (RST_ID), bumped by each refresh that changed it.",
        ()),
    "recovery_remaining": (
        _GAUGE, "Changelog records left to restore per table partition while the worker "
        "recovers its tables.", ("partition",)),
    "broker_unreachable_seconds": (
        _GAUGE, "Seconds a broker (by node id) has refused this worker's connections, while it "
        "does.", ("broker",)),
}


def family(name: str) -> CounterMetricFamily | GaugeMetricFamily:
    """An empty family of :data:`METRICS`' metric ``name``."""
    kind, text, labels = METRICS[name]
    make = CounterMetricFamily if kind == _COUNTER else GaugeMetricFamily
    return make(PREFIX + name, text, labels=labels)


class WorkerCollector:
    """The worker's metrics, read when scraped (a prometheus_client custom collector).

    ``service`` is the routes' :class:`~bucket_app.web.service.Service`: the agent's counters
    (``processor.counter``) and the snapshot reader's state (``reader.state``), both written by
    other threads and only read here, whole values at a time. A value not known yet (the
    snapshot's age before its first refresh, the lag of a partition not fetched yet) is left
    out rather than reported as 0.
    """

    def __init__(self, service: Service, lag: ConsumerLag, recovery: RecoveryProgress,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.lag = lag
        self.recovery = recovery
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        """The metric names, for the registry's clash check (without reading any value)."""
        return [family(name) for name in METRICS]

    def collect(self) -> Iterator[Metric]:
        counter = self.service.processor.counter
        state = self.service.reader.state
        found = {name: family(name) for name in METRICS}
        found["messages_counted"].add_metric([], counter.counted)
        for reason, n in sorted(dict(counter.skipped).items()):
            found["messages_skipped"].add_metric([reason], n)
        found["messages_late"].add_metric([], getattr(counter, "late", 0))
        found["dead_letters"].add_metric([], getattr(counter, "dead_letters", 0))
        for partition, behind in sorted(self.lag.lag.items()):
            found["consumer_lag"].add_metric([str(partition)], behind)
        if state.refreshed_at_s:
            found["snapshot_age_seconds"].add_metric(
                [], max(self.clock() - state.refreshed_at_s, 0.0))
        rows = getattr(state, "rows", None)
        if rows is not None:
            found["snapshot_rows"].add_metric([], rows)
        found["snapshot_generation"].add_metric([], state.generation)
        for partition, left in sorted(self.recovery.remaining.items()):
            found["recovery_remaining"].add_metric([str(partition)], left)
        for broker, seconds in sorted(brokerlog.outages().unreachable().items()):
            found["broker_unreachable_seconds"].add_metric([broker], seconds)
        return iter(found.values())


def build_registry(service: Service, lag: ConsumerLag, recovery: RecoveryProgress,
                   clock: Callable[[], float] = time.time) -> CollectorRegistry:
    """This app's registry: :class:`WorkerCollector` and the SQL query-time histogram, which
    ``service.on_query`` feeds from now on."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(service, lag, recovery, clock))
    sql_seconds = Histogram(
        PREFIX + "sql_query_seconds", "Time of each SQL query in its SQL process.",
        buckets=SQL_BUCKETS_S, registry=registry)
    service.on_query = sql_seconds.observe
    return registry


def group(registry: CollectorRegistry) -> Group:
    """GET /metrics (behind ``http_token`` like every route but the public ones)."""

    async def metrics(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        return aioweb.Response(body=generate_latest(registry),
                               headers={"Content-Type": CONTENT_TYPE_LATEST})

    return Group([Route(
        "GET", "/metrics", "the worker's counters and gauges, Prometheus text format", metrics,
        {"200": {"description": "the metrics", "content": {"text/plain": TEXT}}})])
