"""The seam's Metadata v10 request for topic ids, byte for byte against Kafka's wire format
(flexible version: compact arrays and strings, tagged fields); a real broker answers it in
tests/integration/test_changelog_identity.py."""

from __future__ import annotations

import base64
import os
import struct
from io import BytesIO

from bucket_app.seam.clients import _MetadataRequestV10, _MetadataResponseV10, _Uuid


def test_a_uuid_reads_as_kafka_prints_it_and_zero_as_none() -> None:
    raw = os.urandom(16)
    printed = _Uuid.decode(BytesIO(raw))
    assert printed == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert printed is not None and len(printed) == 22
    assert _Uuid.encode(printed) == raw
    assert _Uuid.decode(BytesIO(bytes(16))) is None and _Uuid.encode(None) == bytes(16)


def test_the_request_asks_for_named_topics_without_creating_them() -> None:
    request = _MetadataRequestV10([(None, "abc", {})], False, False, False, {})
    # topics: 1 (+1), null id, "abc" (3 + 1), no tags; three false flags; no tags
    assert request.encode() == b"\x02" + bytes(16) + b"\x04abc\x00" + b"\x00\x00\x00" + b"\x00"
    assert (request.API_KEY, request.API_VERSION, request.FLEXIBLE_VERSION) == (3, 10, True)


def test_the_response_gives_each_topic_its_id() -> None:
    topic_id = os.urandom(16)
    partition = (struct.pack(">hiii", 0, 0, 1, 5) + b"\x02" + struct.pack(">i", 1)
                 + b"\x02" + struct.pack(">i", 1) + b"\x01" + b"\x00")
    frame = (struct.pack(">i", 0)                                    # throttle
             + b"\x02" + struct.pack(">i", 1) + b"\x0a127.0.0.1"     # one broker
             + struct.pack(">i", 9092) + b"\x00" + b"\x00"           # no rack, no tags
             + b"\x03id" + struct.pack(">i", 1)                      # cluster id, controller
             + b"\x02" + struct.pack(">h", 0) + b"\x04abc" + topic_id + b"\x00"
             + b"\x02" + partition + struct.pack(">i", 0) + b"\x00"  # topic: 1 partition
             + struct.pack(">i", 0) + b"\x00")                       # cluster ops, no tags
    response = _MetadataResponseV10.decode(frame)
    ((error, name, printed, internal, partitions, _ops, _tags),) = response.topics
    assert (error, name, internal, len(partitions)) == (0, "abc", False, 1)
    assert printed == base64.urlsafe_b64encode(topic_id).decode().rstrip("=")
