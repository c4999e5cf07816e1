"""What tests share: helpers here, never imported from another test module.

The harness the integration tests and the benchmark share - real Kafka, real workers - is
``kafka`` (topics, producing, end offsets and ground truth, the SASL_SSL broker's arguments),
``worker`` (``faust -A bucket_app worker`` processes with a written settings file) and ``http``
(the plain HTTP client both use); those import no pytest, and ``bench`` (run as ``python -m
bench.run`` from the repository root) imports them directly; ``cluster`` drives the three
brokers of ``make kafka-cluster``. ``fixtures`` makes pytest
fixtures of them for the integration and browser conftests. The rest are the unit tests'
helpers: ``settings`` (the seed's settings files), ``fuzz`` and ``counting`` (strategies,
oracles, shared configurations), ``batches``, ``sqlite``, ``web``, ``openapi``, ``output``,
``browser``. ``tests/unit/test_layout.py`` fails if a test module imports another.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
