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
