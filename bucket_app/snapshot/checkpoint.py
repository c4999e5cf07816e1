"""What a snapshot on disk reflects, stored with every refresh (:class:`Checkpoint`).

:class:`~bucket_app.snapshot.store.SnapshotStore` writes it in the same transaction as the rows
it describes, and reads it back to decide whether the files can be resumed; the SQLite child
sends it to the worker as JSON (:mod:`bucket_app.snapshot.process`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bucket_app.counting.lifecycle import NEVER
from bucket_app.snapshot import lineage
from bucket_app.snapshot.codec import Progress


@dataclass
class Checkpoint:
    """What a snapshot on disk reflects, stored with every refresh in the same transaction;
    from :meth:`SnapshotStore.open` also whether it was resumed, and why (not)."""

    generation: int = 0
    # changelog partition -> the next offset to read
    offsets: dict[int, int] = field(default_factory=dict)
    progress: dict[int, Progress] = field(default_factory=dict)
    closing_s: float = NEVER
    final_through: float = NEVER
    rows: int = 0
    refreshed_at_s: float = 0.0
    resumed: bool = False
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation,
                "offsets": {str(p): o for p, o in self.offsets.items()},
                "progress": {str(p): [g.offset, g.watermark_s, g.seen_at_s]
                             for p, g in self.progress.items()},
                "closing_s": _finite(self.closing_s), "final_through": _finite(self.final_through),
                "rows": self.rows, "refreshed_at_s": self.refreshed_at_s,
                "resumed": self.resumed, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Checkpoint:
        return cls(
            generation=int(doc["generation"]),
            offsets={int(p): int(o) for p, o in doc["offsets"].items()},
            progress={int(p): Progress(int(o), float(w), float(s))
                      for p, (o, w, s) in doc["progress"].items()},
            closing_s=_infinite(doc["closing_s"]), final_through=_infinite(doc["final_through"]),
            rows=int(doc["rows"]), refreshed_at_s=float(doc["refreshed_at_s"]),
            resumed=bool(doc.get("resumed", False)), reason=str(doc.get("reason", "")))


def _finite(value: float) -> float | None:
    """JSON has no -inf: NEVER is stored as null."""
    return value if math.isfinite(value) else None


def _infinite(value: float | None) -> float:
    return NEVER if value is None else float(value)


def why_not_resume(doc: Mapping[str, Any] | None, identity: Mapping[str, Any],
                   topic_id: str | None, changelog: Mapping[int, tuple[int, int]],
                   max_age_s: float | None, now_s: float) -> str | None:
    """Why the stored checkpoint ``doc`` may not be resumed by a store of ``identity``
    reading the changelog of ``topic_id`` (:mod:`bucket_app.snapshot.lineage`) whose
    partitions hold ``changelog`` (partition -> (beginning, end) offsets), at most
    ``max_age_s`` old at ``now_s``; None when it may."""
    if doc is None:
        return "no snapshot with a checkpoint on disk"
    if doc.get("identity") != identity:
        stored = doc.get("identity") or {}
        changed = sorted(k for k in identity.keys() | stored.keys()
                         if stored.get(k) != identity.get(k))
        return f"the snapshot was built for other settings ({', '.join(changed)} differ)"
    if (doc["file_nonce"], doc["file_commit"]) != (doc["nonce"], doc["commit"]):
        return (f"the snapshot file (commit {doc['file_commit']}) and its side file (commit "
                f"{doc['commit']}) do not reflect the same refresh")
    if (recreated := lineage.mismatch(doc, topic_id, identity["changelog"])):
        return recreated
    offsets = {int(p): int(o) for p, o in doc["offsets"].items()}
    if set(offsets) != set(changelog):
        return (f"the snapshot reflects changelog partitions {sorted(offsets)}, the "
                f"changelog has {sorted(changelog)}")
    for partition, offset in sorted(offsets.items()):
        beginning, end = changelog[partition]
        if not beginning <= offset <= end:
            return (f"changelog partition {partition} holds offsets [{beginning}, {end}], "
                    f"the snapshot stopped at {offset} (the changelog was recreated, or "
                    "records it had not read were deleted)")
    age_s = now_s - float(doc["refreshed_at_s"])
    if max_age_s is not None and age_s > max_age_s:
        return (f"the snapshot is {age_s:.0f} s old: the changelog may have dropped "
                f"tombstones it has not read (resumed only within {max_age_s:.0f} s)")
    return None
