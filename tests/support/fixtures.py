"""The fixtures of the tiers that need services: a real Kafka broker (``make kafka``), the
secure broker (``make kafka-secure``), real workers as subprocesses.

Each test module gets fresh topic and app names, so runs never see each other's data. Workers are
started exactly as users start them, ``faust -A bucket_app worker``, with a settings file
written into the test's tmp directory; they are stopped with SIGTERM (or killed with SIGKILL by
the tests that want a crash). The harness itself is ``tests.support.kafka`` and
``tests.support.worker``, which the benchmark shares; this module only makes fixtures of it.
``tests/integration/conftest.py`` and ``tests/browser/conftest.py`` import them, so the
autouse ``kafka_broker`` check applies to those tiers only, never to ``tests/unit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kafka import (
    BROKERS,
    SECURE_BROKERS,
    SECURE_DIR,
    SECURE_USER,
    SecureBroker,
    broker_error,
    unique,
)
from tests.support.worker import Worker


@pytest.fixture(scope="session", autouse=True)
def kafka_broker() -> str:
    exc = broker_error(BROKERS)
    if exc is not None:
        pytest.fail(f"no Kafka broker at {BROKERS} ({exc}); run `make kafka` or `make test`")
    return BROKERS


@pytest.fixture(scope="session")
def secure_broker() -> SecureBroker:
    """The broker of `make kafka-secure`; fails (never skips) when it is not running."""
    hint = "run `make kafka-secure` (or `make test`, which starts it)"
    exc = broker_error(SECURE_BROKERS)
    if exc is not None:
        pytest.fail(f"no secure Kafka broker at {SECURE_BROKERS} ({exc}); {hint}")
    cafile, password = SECURE_DIR / "ca.pem", SECURE_DIR / "password"
    for needed in (cafile, password):
        if not needed.is_file():
            pytest.fail(f"{needed} is missing; {hint}")
    return SecureBroker(SECURE_BROKERS, cafile, SECURE_USER, password.read_text().strip())


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def make(topic: str, app_id: str | None = None, name: str = "w", **kwargs: Any) -> Worker:
        worker = Worker(tmp_path / name, topic=topic, app_id=app_id or unique("app"), **kwargs)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()
