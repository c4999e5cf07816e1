"""Topic administration at start-up: wait for the brokers, create and check the topics.

Before Faust starts, :func:`source_partitions` makes sure the source topic and the counts
changelog exist with matching partition counts, and returns that count (Faust needs it to
declare the topic and the table). It tells three failures apart, because an operator fixes
each differently:

- the brokers cannot be reached (down, not started yet, wrong address): the worker waits,
  logging a line every few seconds and answering ``/health`` with ``503 starting`` meanwhile
  (the worker hands in :class:`~bucket_app.web.starting.StartingServer`), until they appear or
  ``startup_timeout`` passes (:class:`~bucket_app.errors.KafkaUnavailable`);
- the brokers answer but refuse this client (credentials, certificates, protocol): waiting
  cannot help, so start-up stops at once (:class:`~bucket_app.errors.KafkaAuthError`);
- a topic is wrong (partition counts disagree, it cannot be created): start-up stops with a
  line naming the topic and why (:class:`~bucket_app.errors.TopicError`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidReplicationFactorError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NotControllerError,
    PolicyViolationError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from bucket_app import identity
from bucket_app.errors import BrokersUnreachable, BucketAppError, KafkaUnavailable, TopicError
from bucket_app.kafka import security as kafka_security
from bucket_app.settings import Settings

log = logging.getLogger(__name__)

# One attempt to reach the brokers and check the topics; a slow cluster gets this long.
KAFKA_TIMEOUT_S = 30.0
# Between attempts while the brokers are unreachable, and between "waiting" lines.
RETRY_INTERVAL_S = 2.0
WAIT_LOG_INTERVAL_S = 5.0


# How long a topic gets to appear with all its partitions. Two topics and the connection
# (KAFKA_TIMEOUT_S) must fit in the probe's time (3 x KAFKA_TIMEOUT_S), or a topic problem
# would be reported as unreachable brokers.
TOPIC_TIMEOUT_S = 20.0
# A changelog whose partition count differs from the source's for this long is wrong, not
# still appearing in the metadata (a new topic's partitions show up within a second or so).
MISMATCH_STABLE_S = 5.0
# Creation answers after which the topic may yet appear (look again) or be created (ask again).
_CREATE_RETRIABLE = frozenset({RequestTimedOutError.errno, NotControllerError.errno})


def _create_refused(topic: NewTopic, error: type[KafkaError] | KafkaError, detail: str,
                    brokers: str) -> TopicError:
    """The TopicError for a creation the cluster refused: the topic, the error, what to do."""
    name = error.__name__ if isinstance(error, type) else type(error).__name__
    why = f"{name}: {detail}" if detail else name
    create = (f"kafka-topics --bootstrap-server {brokers} --create --topic {topic.name} "
              f"--partitions {topic.num_partitions} "
              f"--replication-factor {topic.replication_factor}"
              + "".join(f" --config {k}={v}" for k, v in topic.topic_configs.items()))
    code = getattr(error, "errno", None)
    if code in (TopicAuthorizationFailedError.errno, ClusterAuthorizationFailedError.errno):
        todo = (f"grant this client's principal CREATE on topic {topic.name} (or on the "
                f"cluster), or have an administrator create it: {create}")
    elif code == PolicyViolationError.errno:
        todo = ("the brokers' create.topic.policy refused it; have an administrator "
                f"create it: {create}")
    elif code == InvalidReplicationFactorError.errno:
        todo = (f"replication_factor = {topic.replication_factor} ([KafkaSettings]) is more "
                "than the brokers available; lower it, or start more brokers")
    else:
        todo = f"create it yourself: {create}"
    return TopicError(f"cannot create topic {topic.name} ({why}); {todo}")


async def _create(admin: AIOKafkaAdminClient, topic: NewTopic, brokers: str) -> bool:
    """Ask for ``topic``: True once it is created (or exists), False to ask again; raise
    TopicError when the cluster refuses it for good.

    aiokafka's ``create_topics`` raises only for the request as a whole; a refusal of one
    topic (authorization, a create-topic policy, a bad replication factor) is an error code
    in the answer, which, left unread, looked like a topic that never appeared.
    """
    try:
        answer = await admin.create_topics([topic])
    except (KafkaConnectionError, KafkaTimeoutError, RequestTimedOutError):
        raise  # the brokers did not answer: the caller waits for them
    except TopicAlreadyExistsError:
        return True
    except KafkaError as exc:
        raise _create_refused(topic, exc, str(exc), brokers) from exc
    for entry in getattr(answer, "topic_errors", ()):
        name, code = entry[0], entry[1]
        detail = entry[2] if len(entry) > 2 and entry[2] else ""
        if name != topic.name or code == 0:
            continue
        if code == TopicAlreadyExistsError.errno:
            return True
        if code in _CREATE_RETRIABLE:
            return False
        raise _create_refused(topic, kafka_errors.for_code(code), detail, brokers)
    log.info("created topic %s with %d partitions", topic.name, topic.num_partitions)
    return True


async def _ensure_topic(admin: AIOKafkaAdminClient, topic: NewTopic,
                        expect_partitions: int | None = None, *, source_topic: str = "",
                        brokers: str = "<brokers>",
                        timeout_s: float = TOPIC_TIMEOUT_S) -> int:
    """Create ``topic`` unless it exists; return its partition count once metadata shows it.

    On a multi-broker cluster a new topic's partitions reach the metadata one by one, so this
    waits until the count is stable (and, for the changelog, equal to the source's:
    ``expect_partitions``, with ``source_topic`` named in the error). Existence is checked by
    listing topics: describing a missing topic is a metadata request that a broker with
    auto.create.topics.enable creates it for, with the broker's default partitions. Raises
    TopicError naming the topic and why: the cluster refused to create it, its partition count
    differs from the source's, or it did not appear within ``timeout_s``.
    """
    started = time.monotonic()
    created = False
    seen: str = "not listed by the brokers"
    last_found, found_since = -1, started
    while True:
        waited = time.monotonic() - started
        if waited >= timeout_s:
            break
        if topic.name not in await admin.list_topics():
            if not created:
                created = await _create(admin, topic, brokers)
            await asyncio.sleep(0.2)
            continue
        described = await admin.describe_topics([topic.name])
        info = described[0] if described else {}
        error_code = info.get("error_code", 3)
        found = len(info.get("partitions") or ()) if error_code == 0 else 0
        if error_code:
            seen = f"listed, but its metadata answers {kafka_errors.for_code(error_code).__name__}"
        else:
            seen = f"listed with {found} partitions"
        now = time.monotonic()
        if found != last_found:
            last_found, found_since = found, now
        stable = now - found_since
        if found and expect_partitions is None and (not created or stable >= 0.5):
            return found
        if found and found == expect_partitions:
            return found
        if found and expect_partitions is not None and (
                found > expect_partitions or stable >= MISMATCH_STABLE_S):
            raise TopicError(
                f"topic {topic.name} has {found} partitions but the source topic "
                f"{source_topic or '(source)'} has {expect_partitions}: the changelog belongs "
                "to a source topic of that name with another partition count (deleted and "
                "created again?), so its counts and offsets are not this topic's. Delete it "
                f"(kafka-topics --bootstrap-server {brokers} --delete --topic {topic.name}) to "
                "count the topic afresh, or set another app_id to count afresh and keep it")
        await asyncio.sleep(0.5)
    raise TopicError(
        f"topic {topic.name} did not become available within {time.monotonic() - started:.0f} s "
        f"(last seen: {seen}{', created by this worker' if created else ''}); likely the "
        "brokers are slow to agree on new topics (overloaded, or a broker holding its "
        "replicas is down), or a topic of that name is still being deleted; check with "
        f"kafka-topics --bootstrap-server {brokers} --describe --topic {topic.name}")


async def _probe(settings: Settings) -> int:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=list(settings.brokers), request_timeout_ms=10_000,
        **kafka_security.client_kwargs(settings),
    )
    try:
        try:
            await asyncio.wait_for(admin.start(), KAFKA_TIMEOUT_S)
        except (TimeoutError, KafkaConnectionError, OSError) as exc:
            # A broker that answers but refuses us is not worth waiting for.
            await kafka_security.raise_if_refused(settings)
            raise BrokersUnreachable(_describe(exc)) from exc
        brokers = ",".join(settings.brokers)
        n = await _ensure_topic(admin, NewTopic(
            settings.topic, settings.partitions, settings.replication_factor), brokers=brokers)
        await _ensure_topic(admin, NewTopic(
            identity.counts_changelog(settings), n, settings.replication_factor,
            topic_configs={"cleanup.policy": "compact"}), expect_partitions=n,
            source_topic=settings.topic, brokers=brokers)
        if settings.output_topic is not None:
            await _ensure_topic(admin, NewTopic(
                settings.output_topic, n, settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"}), brokers=brokers)
        if settings.dead_letter_topic is not None:
            await _ensure_topic(admin, NewTopic(
                settings.dead_letter_topic, n, settings.replication_factor), brokers=brokers)
        return n
    finally:
        await admin.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KafkaConnectionError):
        # aiokafka's text repeats the class name and lists resolved socket addresses
        return "no broker accepted a connection"
    if isinstance(exc, TimeoutError):
        return f"no answer within {KAFKA_TIMEOUT_S:.0f} s"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _probe_in_thread(settings: Settings) -> int:
    """:func:`_probe` on a private event loop in a thread.

    This runs at import time, before Faust owns the main thread's loop, and must not leave a
    closed loop behind for it.
    """
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["n"] = asyncio.run(_probe(settings))
        except BucketAppError as exc:
            result["error"] = exc
        except (TimeoutError, KafkaError, OSError) as exc:
            result["error"] = BrokersUnreachable(_describe(exc))

    thread = threading.Thread(target=run, name="bucket_app-probe", daemon=True)
    thread.start()
    thread.join(KAFKA_TIMEOUT_S * 3)
    if "n" in result:
        return int(result["n"])
    error = result.get("error")
    if isinstance(error, BaseException):
        raise error
    raise BrokersUnreachable(f"no answer within {KAFKA_TIMEOUT_S * 3:.0f} s")


class Holder(Protocol):
    """What answers on the web address while start-up waits: its ``reason`` is kept current
    (the worker's is :class:`~bucket_app.web.starting.StartingServer`)."""

    reason: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def source_partitions(settings: Settings, *, retry_interval_s: float = RETRY_INTERVAL_S,
                      holder: Callable[[], Holder] | None = None) -> int:
    """The source topic's partition count; creates it and the changelog topic if missing.

    Faust would create the changelog itself, but two replicas starting together on a cluster
    can then see it before all its partitions are in the metadata and crash with
    PartitionsMismatch; creating and checking it first avoids that. While the brokers cannot
    be reached this waits (see the module docstring), with ``holder()`` answering meanwhile
    (``/health`` as ``starting``).
    """

    brokers = ",".join(settings.brokers)
    started = time.monotonic()
    next_line = started
    server: Holder | None = None
    try:
        while True:
            try:
                return _probe_in_thread(settings)
            except BrokersUnreachable as exc:
                reason = f"waiting for Kafka at {brokers}: {exc}"
                waited = time.monotonic() - started
                limit = settings.startup_timeout_s
                if limit is not None and waited >= limit:
                    raise KafkaUnavailable(
                        f"cannot reach Kafka at {brokers} ([KafkaSettings] brokers in "
                        f"{settings.source}) within startup_timeout = {limit:g} s: {exc}"
                    ) from None
                if server is None and holder is not None:
                    server = holder()
                    server.start()
                if server is not None:
                    server.reason = reason
                if time.monotonic() >= next_line:
                    # Faust has not set up logging yet at this point of start-up: stderr.
                    print(f"bucket_app: {reason} (waited {waited:.0f} s"
                          + (f" of startup_timeout {limit:g} s)" if limit else ")"),
                          file=sys.stderr, flush=True)
                    next_line = time.monotonic() + WAIT_LOG_INTERVAL_S
                time.sleep(retry_interval_s)
    finally:
        if server is not None:
            server.stop()
