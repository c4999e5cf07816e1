"""The harness the integration tests and the benchmark share: real Kafka, real workers.

``kafka`` creates topics, produces, reads end offsets and ground truth, and holds the security
arguments of the SASL_SSL broker; ``worker`` starts ``faust -A bucket_app worker`` processes
with a written settings file; ``http`` is the plain HTTP client both use. Nothing here imports
pytest: ``tests/integration/conftest.py`` turns it into fixtures, and ``bench`` (run as
``python -m bench.run`` from the repository root) imports it directly.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
