"""The consumer thread under :class:`~bucket_app.seam.consumer.SeamConsumer`, and the options
an app sets for it (see :mod:`bucket_app.seam.consumer` for what they change)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from bucket_app.seam import clients, fetch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerOptions:
    """What an app's consumer does differently, for ``source_topic`` (see module doc)."""

    source_topic: str
    fetch_min_bytes: int
    fetch_max_wait_ms: int
    fetch_max_bytes: int
    isolation_level: str = "read_committed"
    #: reads the source topic's fetches natively (fetch.NativeReader), when the kernel runs
    native: fetch.NativeReader | None = None
    #: the size of the next fetch after each fetch read natively (fetch.FetchSizer)
    sizer: fetch.FetchSizer | None = None


def options_of(app: Any) -> ConsumerOptions | None:
    return getattr(app, "consumer_options", None)  # type: ignore[no-any-return]


class SeamConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the app's fetch and seek behaviour."""

    async def seek_to_committed(self) -> Any:
        """Seek to the committed offsets, and source partitions without one to their beginning.

        Workaround for aiokafka's ``seek_to_committed``, which skips a partition whose
        committed offset is missing or 0 (``if offset and offset > 0``, aiokafka 0.14.0
        consumer.py; https://github.com/aio-libs/aiokafka/issues/1003, open). Faust drops
        records it fetched while a rebalance was under way and relies on this seek
        (``Consumer.perform_seek``) to read them again, so they were silently lost (a replica
        that joined mid-stream never counted its partitions; tests/integration/test_replicas.py).
        Re-reading such a partition from its beginning is safe because counting is idempotent
        per source offset.
        It can go only when both cases are handled upstream: offset 0 by the fix of aiokafka
        #1003 (its proposed ``offset >= 0``), and no committed offset at all (None), which that
        fix would still skip and for which no upstream issue was found (Faust's
        ``perform_seek`` would have to seek such partitions to their reset position).
        """
        committed = await super().seek_to_committed()
        options = options_of(self.app)
        if options is not None:
            fresh = [tp for tp, offset in committed.items()
                     if not offset and tp.topic == options.source_topic]
            if fresh:
                await self.call_thread(self._ensure_consumer().seek_to_beginning, *fresh)
        return committed

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        options = options_of(self.app)
        if options is not None:
            fetch.tune_fetches(consumer, options.fetch_min_bytes, options.fetch_max_wait_ms,
                               options.fetch_max_bytes)
            fetch.read_isolated(consumer, options.isolation_level)
        return consumer

    async def on_thread_stop(self) -> None:
        """Stop the aiokafka consumer, also while a fetch waits out its retry back-off.

        Workaround for aiokafka 0.14.0: ``Fetcher.close`` cancels its pending fetch requests
        and awaits each, and a request that failed (its broker unreachable) sleeps its back-off
        outside the handler that absorbs the cancellation, so ``close`` raises CancelledError.
        The consumer's ``stop`` then ends before it closes its connections, and the thread
        dies without telling mode it stopped: SIGTERM took 63 s (mode's stop timeout) whenever
        the brokers were gone. The connections are closed here instead.
        """
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this thread itself is being cancelled: not the case above
            log.warning("bucket_app: the Kafka consumer stopped while a fetch was failing "
                        "(brokers unreachable); closing its connections")
            await clients.close_connections(self._ensure_consumer())

    async def on_start(self) -> None:
        # Faust builds and starts the aiokafka consumer here; its fetcher exists once started,
        # before Faust subscribes (so before any source partition is fetched).
        await super().on_start()
        options = options_of(self.app)
        if options is not None and not self.app.client_only:
            consumer: Any = self.consumer  # the SeamConsumer this thread fetches for
            consumer.positions = fetch.bulk_source_records(self._ensure_consumer(),
                                                           options.source_topic, options.native,
                                                           options.sizer)
