"""Integration fixtures: a real Kafka broker, the secure broker, real workers.

They are defined in ``tests/support/fixtures.py`` (the browser tests use them too); importing
them here makes them this tier's, with ``kafka_broker`` autouse: every test here fails, never
skips, when the broker is not running.
"""

from __future__ import annotations

from tests.support.fixtures import kafka_broker, make_worker, secure_broker

__all__ = ["kafka_broker", "make_worker", "secure_broker"]
