"""What the web views and the output topic read of the snapshot reader: :class:`ReaderState`.

The reader (:mod:`bucket_app.snapshot.reader`) replaces its fields after each refresh; the web
server's thread reads them concurrently, so each is replaced whole, never updated in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bucket_app.counting.lifecycle import NEVER
from bucket_app.snapshot.codec import Progress


@dataclass
class ReaderState:
    """What the web views report about the snapshot: generation, freshness, completeness."""

    partitions: int
    generation: int = 0
    refreshed_at_s: float = 0.0
    progress: dict[int, Progress] = field(default_factory=dict)
    # changelog partition -> (next offset read, high watermark at the last fetch)
    changelog: dict[int, tuple[int, int]] = field(default_factory=dict)
    # source partition -> end offset (next offset to be written) at the last refresh
    source_end: dict[int, int] = field(default_factory=dict)
    started: bool = False
    # the closing time the last refresh marked final buckets by (bucket_app.counting.lifecycle)
    closing_s: float = NEVER
    # rows of the snapshot table after the last refresh (None: the store does not say)
    rows: int | None = None

    @property
    def caught_up(self) -> bool:
        """The snapshot holds everything the changelog held at its last fetch."""
        return self.started and len(self.changelog) == self.partitions and all(
            pos >= high for pos, high in self.changelog.values())

    def offset(self, partition: int) -> int:
        """The last source offset of ``partition`` the snapshot reflects (-1: none yet)."""
        progress = self.progress.get(partition)
        return -1 if progress is None else progress.offset

    def lag(self, partition: int) -> int | None:
        end = self.source_end.get(partition)
        return None if end is None else max(end - 1 - self.offset(partition), 0)

    def waiting(self, progress: Mapping[int, Progress]) -> set[int]:
        """Source partitions with records ``progress`` does not reflect yet, or not known not
        to have any (their end is unknown): never idle (:mod:`bucket_app.counting.lifecycle`)."""
        found = set()
        for partition in range(self.partitions):
            end = self.source_end.get(partition)
            at = progress.get(partition)
            if end is None or end - 1 > (-1 if at is None else at.offset):
                found.add(partition)
        return found

    @property
    def complete(self) -> bool:
        """Caught up with the changelog, and every message produced so far is counted."""
        return self.caught_up and len(self.source_end) == self.partitions and all(
            self.lag(p) == 0 for p in range(self.partitions))

    def position(self) -> dict[int, int]:
        return {p: self.offset(p) for p in range(self.partitions)}

    def reached(self, wanted: Mapping[int, int]) -> bool:
        return self.caught_up and all(self.offset(p) >= o for p, o in wanted.items())
