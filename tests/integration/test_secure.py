"""Kafka security against the real SASL_SSL broker (`make kafka-secure`: 127.0.0.1:9095,
SCRAM-SHA-512, a CA of its own).

Workers are started as users start them, with the password in BUCKET_APP_SASL_PASSWORD rather
than the settings file. A worker that the broker refuses (wrong password, a CA that did not sign
the broker's certificate, no TLS) must stop at once with exit status 2 and one line naming the
key to fix, not wait for the brokers forever. Expected counts are computed here from the
records the test produced, and checked against the topic as read back.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from tests.support.kafka import (
    SecureBroker,
    bulk_records,
    create_topic,
    produce,
    topic_counts,
    unique,
)
from tests.support.worker import counts_of

pytestmark = pytest.mark.integration

# A refused worker exits as soon as its start-up check has asked the broker (seconds); this
# bound only catches one that waits for the brokers instead.
REFUSAL_LIMIT_S = 60


def test_counts_exactly_over_sasl_ssl(secure_broker: SecureBroker, make_worker):
    """Every Kafka client of the worker (probe, Faust's consumer and producer, the snapshot
    reader) goes through the SASL_SSL listener: the counts arrive, exactly."""
    client = secure_broker.client()
    topic = unique("secure")
    create_topic(topic, 3, brokers=secure_broker.brokers, security=client)
    records, expected = bulk_records(3_000, 3, seed=9095, prefix="sec")
    last = produce(topic, records, brokers=secure_broker.brokers, security=client)

    worker = make_worker(topic, partitions=3, extra=secure_broker.worker_settings(),
                         env=secure_broker.worker_env())
    worker.start()
    assert "sasl_password" not in worker.settings_path.read_text()
    worker.wait_caught_up(last, timeout_s=120)

    truth = topic_counts(topic, 3, brokers=secure_broker.brokers, security=client)
    assert truth == expected
    assert counts_of(worker, "sec-") == expected
    assert sum(expected.values()) == 3_000
    # the filtered API over the same snapshot
    server, topic_name, start = min(expected)
    answer = worker.get(f"/api/v1/buckets?server_name={server}&topic={topic_name}"
                        f"&from={start}&to={start + 20}").json()
    assert [(r["server_name"], r["topic"], r["bucket_start"], r["count"])
            for r in answer["rows"]] == [(server, topic_name, start, expected[min(expected)])]
    assert secure_broker.password not in worker.log_path.read_text(errors="replace")


def refused(worker, *, key: str) -> tuple[str, float]:
    """Start ``worker``, expect exit status 2 with one ``bucket_app:`` line naming ``key``;
    return that line and the seconds it took."""
    started = time.monotonic()
    worker.start(wait=False)
    try:
        status = worker.proc.wait(REFUSAL_LIMIT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running after {REFUSAL_LIMIT_S} s:\n"
                             f"{worker.tail()}") from None
    took = time.monotonic() - started
    log = worker.log_path.read_text(errors="replace")
    assert status == 2, log
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if line.startswith("bucket_app: [KafkaSettings]")]
    assert len(lines) == 1, log
    assert lines[0].startswith(f"bucket_app: [KafkaSettings] {key} in {worker.settings_path} "
                               f"(or BUCKET_APP_{key.upper()}): "), lines[0]
    assert "waiting for Kafka" not in log, "a refusal is not worth waiting for"
    print(f"refused in {took:.1f} s: {lines[0]}")
    return lines[0], took


def test_wrong_password_exits_2_naming_sasl_password(secure_broker: SecureBroker, make_worker):
    worker = make_worker(unique("secure"), extra=secure_broker.worker_settings(),
                         env=secure_broker.worker_env(password="not-the-password"))
    line, _took = refused(worker, key="sasl_password")
    assert (f"the broker at {secure_broker.brokers} refused user "
            f"'{secure_broker.username}'") in line
    assert "SaslAuthenticationFailed" in line
    assert "not-the-password" not in worker.log_path.read_text(errors="replace")


def test_untrusted_ca_exits_2_naming_ssl_cafile(secure_broker: SecureBroker, make_worker,
                                                tmp_path: Path):
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                    "-days", "1", "-subj", "/CN=not the broker's CA",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca)],
                   check=True, capture_output=True)
    extra = dict(secure_broker.worker_settings(), ssl_cafile=str(other_ca))
    worker = make_worker(unique("secure"), extra=extra, env=secure_broker.worker_env())
    line, _took = refused(worker, key="ssl_cafile")
    assert f"the certificate of the broker at {secure_broker.brokers} is not signed by a CA in " \
           f"{other_ca}" in line
    assert "SSLCertVerificationError" in line


def test_plaintext_worker_exits_2_naming_security_protocol(secure_broker: SecureBroker,
                                                           make_worker):
    worker = make_worker(unique("secure"), brokers=secure_broker.brokers)
    line, _took = refused(worker, key="security_protocol")
    assert f"the listener at {secure_broker.brokers} speaks TLS, so PLAINTEXT cannot" in line


def test_plain_aiokafka_client_is_refused_by_the_broker(secure_broker: SecureBroker):
    """The port is open (a broker answers), yet a PLAINTEXT client cannot bootstrap."""
    host, port = secure_broker.brokers.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3):
        pass

    async def bootstrap() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=secure_broker.brokers,
                                    request_timeout_ms=10_000)
        try:
            await admin.start()
        finally:
            await admin.close()

    started = time.monotonic()
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        asyncio.run(bootstrap())
    assert time.monotonic() - started < 15

    # What the broker answers a plaintext ApiVersions request: a fatal TLS alert, then EOF.
    body = struct.pack(">hhih", 18, 0, 1, 4) + b"test"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    content_type, _version, length, level = struct.unpack(">BHHB", answer[:6])
    assert (content_type, level, len(answer)) == (21, 2, 5 + length), answer.hex()
