"""/api/v1/openapi.json against a live worker on the real broker: the document it serves is the
one its settings give, its real answers validate against it, and schemathesis, generating valid
and invalid requests from it for every operation, finds no 5xx and no answer that departs from it.

One worker serves the whole module: no test writes to it. The counts its answers carry are
checked against the records the test produced.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bucket_app.settings import load
from bucket_app.web import openapi, params, stream
from tests.support.http import http
from tests.support.kafka import Record, create_topic, produce, unique
from tests.support.openapi import CASES, check_answer, document_of, operations
from tests.support.worker import Worker

CASES_OPERATIONS = {(method, template) for method, template, *_ in CASES}

pytestmark = pytest.mark.integration

INTERVAL = 20  # the harness's bucket_interval
PARTITIONS = 2
# Examples per operation and generation mode: the whole run stays well under a minute. As the
# fuzz tests do, HYPOTHESIS_PROFILE=explore draws new random examples, and many more.
EXPLORE = os.environ.get("HYPOTHESIS_PROFILE") == "explore"
MAX_EXAMPLES = 1000 if EXPLORE else 40
# A generated min_offsets the snapshot has not reached makes a request wait this long at most
# (wait_ms is clamped to it), not the 2 s default or the 30 s maximum.
MAX_WAIT_MS = 100
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, int]]:
    """A worker that has counted a few hundred records; also the number it counted."""
    topic = unique("openapi")
    create_topic(topic, PARTITIONS)
    worker = Worker(tmp_path_factory.mktemp("openapi") / "w", topic=topic,
                    app_id=unique("app"), partitions=PARTITIONS)
    try:
        worker.start()
        base = int(time.time()) // INTERVAL * INTERVAL - 3600
        records = [Record(json.dumps({"origin_server": f"s-{i % 4}",
                                      "topic": None if i % 9 == 0 else f"t{i % 3}",
                                      "timestamp": base + i * 7}).encode(), i % PARTITIONS)
                   for i in range(300)]
        worker.wait_caught_up(produce(topic, records))
        yield worker, len(records)
    finally:
        worker.stop()


def get_document(worker: Worker) -> dict[str, Any]:
    answer = worker.get(openapi.PATH)
    assert answer.status == 200, answer.body[:300]
    check_answer(answer.json(), "GET", openapi.PATH, answer.status, answer.headers, answer.body)
    document: dict[str, Any] = answer.json()
    return document


def test_live_answers_match_the_document(live: tuple[Worker, int]) -> None:
    worker, produced = live
    document = get_document(worker)
    expected = document_of(load(worker.settings_path, {}))
    assert document == json.loads(json.dumps(expected))
    assert document["paths"]["/a/{table}"]["get"]["parameters"][0]["schema"]["enum"] == [
        "default"]
    assert list(document["components"]["schemas"]["Row"]["properties"]) == [
        "server_name", "topic", "bucket_start", "bucket_end", "count", "RST_ID", "late", "final"]
    for method, template, path, headers, body, status in CASES:
        answer = http(worker.url + path, method=method, headers=headers,
                      data=None if body is None else json.dumps(body).encode())
        assert answer.status == status, (method, path, answer.body[:300])
        check_answer(document, method, template, answer.status, answer.headers, answer.body)
    # the rows that validated are the counts produced
    rows = worker.get("/a/default").json()
    assert sum(row["count"] for row in rows) == produced
    assert {row["server_name"] for row in rows} == {f"s-{i}" for i in range(4)}
    assert CASES_OPERATIONS == operations(document)


@pytest.fixture(scope="module")
def live_schema(live: tuple[Worker, int]) -> Any:
    worker, _ = live
    return schemathesis.openapi.from_url(worker.url + openapi.PATH)


def normalize(case: Any) -> None:
    """Two adjustments to a generated case, for what the document cannot say.

    The query parameters min_offsets and wait_ms win over their header twins, so a case with
    both sends the query one only: the header would be unread, and an invalid one "accepted".
    And a min_offsets the snapshot has not reached holds its request for wait_ms (2 s by
    default, up to 30 s): wait_ms is kept at MAX_WAIT_MS at most, and set to it when absent.
    """
    query = case.query if case.query is not None else {}
    headers = case.headers if case.headers is not None else {}
    for name, header in (("min_offsets", params.MIN_OFFSETS_HEADER), ("wait_ms", "X-Wait-Ms")):
        if name in query:
            headers.pop(header, None)
    for where, name in ((query, "wait_ms"), (headers, "X-Wait-Ms")):
        value = where.get(name)
        # only valid values: an invalid one is answered 400 at once, and must stay invalid
        if isinstance(value, int) and not isinstance(value, bool) and (
                MAX_WAIT_MS < value <= params.MAX_WAIT_MS):
            where[name] = MAX_WAIT_MS
    wants = query.get("min_offsets") or headers.get(params.MIN_OFFSETS_HEADER)
    if wants and "wait_ms" not in query and "X-Wait-Ms" not in headers:
        headers["X-Wait-Ms"] = str(MAX_WAIT_MS)
    if case.headers is not None or headers:
        case.headers = headers


def fuzz(operation: Any, mode: schemathesis.GenerationMode) -> str | None:
    """Run ``operation``'s generated cases; None, or what schemathesis found (shrunk, with a
    curl command to repeat it)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=not EXPLORE, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        normalize(case)
        case.call_and_validate(checks=CHECKS, timeout=30)

    try:
        run()
    except Exception as exc:  # noqa: BLE001 - every finding is reported, not the first only
        return f"{mode.value} {operation.label}: {exc}"
    return None


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_schemathesis_finds_no_server_error_and_no_departure(
        live_schema: Any, mode: schemathesis.GenerationMode) -> None:
    started = time.monotonic()
    tested, findings = [], []
    for result in live_schema.get_all_operations():
        operation = result.ok()
        if operation.path == stream.PATH:  # never ends, so it cannot be one request of a run
            continue
        tested.append(operation.label)
        described = operation.definition.raw
        if mode is schemathesis.GenerationMode.NEGATIVE and not (
                described.get("parameters") or described.get("requestBody")):
            continue  # nothing to send wrong
        finding = fuzz(operation, mode)
        if finding is not None:
            findings.append(finding)
    # schemathesis leaves out the route that served the document itself
    assert set(tested) == {f"{method} {path}" for method, path in CASES_OPERATIONS
                           if path not in (stream.PATH, openapi.PATH)}
    assert not findings, "\n\n".join(findings)
    if not EXPLORE:
        assert time.monotonic() - started < 60, "the run is over its time budget"
