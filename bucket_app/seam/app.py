"""The Faust app class that picks the seam's transport, so its consumer is the seam's.

Faust has no setting for the transport or consumer class; an app makes its transport in
``App._new_transport`` and its consumer in ``App._new_consumer``. :class:`SeamApp` overrides
both, for its own instances only: the transport is :class:`~bucket_app.seam.consumer.
SeamTransport`, and a new consumer is handed to :meth:`SeamApp.on_consumer`.
"""

from __future__ import annotations

from typing import Any

import faust
from faust import transport
from faust.transport.drivers import aiokafka as faust_aiokafka

from bucket_app.errors import IncompatibleLibrary
from bucket_app.seam.consumer import ConsumerOptions, SeamConsumer, SeamTransport


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
