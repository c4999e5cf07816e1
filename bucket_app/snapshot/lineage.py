"""Changelog identity: is the changelog topic on the broker the one a snapshot was read from?

A snapshot's checkpoint stores the next changelog offset of each partition, and a restarted
reader seeks there. Offsets alone do not name a topic's history: a changelog deleted and
recreated (by an operator, or a reset script) starts again at offset 0, and once the new one
has grown past the stored offsets they are all within its bounds, so the reader would resume
in the middle of records it never read and keep the old rows beside them: a mix of two
histories, undetected. Kafka (2.8 and later) gives each topic a random id when it is created
(KIP-516) and a recreated topic a new one; the checkpoint stores the changelog's id
(:func:`stamp`), and :meth:`SnapshotStore.open` resumes only when the broker reports the same
id (:func:`mismatch`), otherwise the snapshot is rebuilt from the changelog and its one
"rebuilding" line says why. aiokafka has no topic ids: the reader asks with a Metadata v10
request of the seam's (:func:`bucket_app.snapshot.reader.read_topic_id`). This module is pure:
the store, in the snapshot's child process, imports it. The
alternatives and why they were not taken are in docs/design.md ("Changelog identity").

What a topic id does not catch, the offset bounds the store checks still do: a changelog whose
end is below a stored offset (truncated, or recreated and not grown that far yet), or whose
beginning is above it (records it had not read deleted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The checkpoint's key: {"topic_id": <the changelog's id as Kafka prints it, or null>}
KEY = "lineage"


def stamp(topic_id: str | None) -> dict[str, Any]:
    """The checkpoint's entry for a snapshot read from the changelog of ``topic_id``."""
    return {KEY: {"topic_id": topic_id}}


def mismatch(checkpoint: Mapping[str, Any], topic_id: str | None, topic: str) -> str | None:
    """Why a snapshot whose stored checkpoint is ``checkpoint`` was not read from the
    changelog ``topic`` whose id is now ``topic_id`` (None: the brokers give none), or None
    when it was (as far as ids tell).

    A checkpoint without the entry was written before ids were checked: it cannot show it
    was read from this topic, so it is rebuilt once. Without ids on either side (old brokers)
    there is nothing to compare and the offset bounds decide."""
    if KEY not in checkpoint:
        if topic_id is None:
            return None
        return (f"the checkpoint does not record which {topic} it was read from (it predates "
                f"topic ids); the changelog's topic id is now {topic_id}")
    stored = checkpoint[KEY].get("topic_id")
    if stored == topic_id:
        return None
    if topic_id is None:
        return (f"the snapshot was read from {topic} with topic id {stored}, and the brokers "
                "now give no topic id to compare")
    return (f"{topic} has topic id {topic_id}, the snapshot was read from topic id "
            f"{stored or 'unknown'}: the changelog was deleted and recreated since")
