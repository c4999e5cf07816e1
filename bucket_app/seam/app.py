"""The Faust app class that picks the seam's transport, so its consumer is the seam's.

Faust has no setting for the transport or consumer class; an app makes its transport in
``App._new_transport`` and its consumer in ``App._new_consumer``. :class:`SeamApp` overrides
both, for its own instances only: the transport is :class:`~bucket_app.seam.consumer.
SeamTransport`, and a new consumer is handed to :meth:`SeamApp.on_consumer`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from aiokafka.errors import KafkaConnectionError
from faust import transport
from faust.transport.drivers import aiokafka as faust_aiokafka

from bucket_app.errors import IncompatibleLibrary
from bucket_app.seam import clients
from bucket_app.seam.consumer import ConsumerOptions, SeamConsumer, SeamTransport

#: how long a stopping app waits for its producer to flush (after the consumer's wait for
#: acknowledgements, consumer.STOP_WAIT_S: SIGTERM exits within 10 s)
STOP_FLUSH_S = 2.0


class SeamApp(faust.App):
    """A Faust app on the seam's Kafka transport; ``consumer_options`` turns its hooks on."""

    consumer_options: ConsumerOptions | None = None

    def _new_transport(self) -> Any:
        url = self.conf.broker_consumer[0]
        driver = transport.by_url(url)
        if not issubclass(SeamTransport, driver):
            raise IncompatibleLibrary(f"broker {url} uses the transport {driver.__name__}; "
                                      f"bucket_app needs {faust_aiokafka.Transport.__module__}")
        return SeamTransport(self.conf.broker_consumer, self)

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        assert isinstance(consumer, SeamConsumer), consumer
        self.on_consumer(consumer)
        return consumer

    def on_consumer(self, consumer: SeamConsumer) -> None:
        """Called once with the app's consumer when Faust creates it."""

    async def _producer_flush(self, logger: Any) -> None:
        """Faust's flush of its producer as the app stops, bounded by STOP_FLUSH_S.

        With the brokers unreachable it waited for the changelog batches in flight until
        their request timeout (Faust's default: 20 minutes). They are failed instead: their
        source offsets were never committed (their acknowledgement is what acknowledges
        them), so the next worker counts those records again.
        """
        flush = asyncio.ensure_future(super()._producer_flush(logger))
        done, _ = await asyncio.wait({flush}, timeout=STOP_FLUSH_S)
        if done:
            flush.result()
            return
        producer = getattr(self._producer, "_producer", None)
        failed = 0 if producer is None else clients.fail_sends(
            producer, KafkaConnectionError("the worker is stopping; brokers unreachable"))
        logger.warning("bucket_app: stopping without the brokers' acknowledgement of %d "
                       "producer batches (brokers unreachable?); their source offsets stay "
                       "uncommitted", failed)
        done, _ = await asyncio.wait({flush}, timeout=1.0)
        if not done:
            flush.cancel()
