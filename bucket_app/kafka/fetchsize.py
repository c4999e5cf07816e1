"""How much one fetch of the source topic may return: more while a backlog of few window-keys
is read, with the kernel.

A counted batch writes each window-key it touched once (RocksDB, a changelog record, later a
snapshot row), however many of its records fell into it. Reading a backlog in larger fetches
writes each window-key once per more records, and the kernel's CPU per message falls. But the
writes a batch holds at once grow with its size where window-keys are many, and with them the
worker's peak memory (docs/performance.md, "Larger fetches for few-key backlogs"). So a fetch
is large only while both hold for the partition fetch just read:

- it touched at most one window-key per ``large // small`` records: a large fetch of such
  records writes no more window-keys than a small fetch can (one per record), so the memory a
  batch holds keeps the small fetch's bound;
- at least as many records again are behind it (up to the partition's high watermark): a
  backlog. A stream the worker keeps up with has less behind each fetch than the fetch held
  (what arrived while it was counted); its batches the broker's minimum fetch size already
  shapes (bucket_app.worker.FETCH_MIN_BYTES), and a larger fetch would only delay them.

Otherwise the next fetch is small. The consumer thread reads each partition's fetch and asks
:meth:`FetchSizes.after` for the next size (:func:`bucket_app.seam.fetch.bulk_source_records`);
the Python path (``BUCKET_APP_KERNEL=python``) always fetches small.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FetchSizes:
    """The fetch size (``fetch.max.bytes``, all partitions together) to ask for next."""

    small: int
    large: int

    def __post_init__(self) -> None:
        if not 0 < self.small <= self.large:
            raise ValueError(f"fetch sizes must be 0 < small <= large: {self}")
        self.size = self.small
        self._factor = self.large // self.small

    def after(self, records: int, window_keys: int, behind: int) -> int:
        """The size for the next fetch, after a partition's fetch of ``records`` counted
        records that touched ``window_keys`` window-keys and left ``behind`` records after
        it."""
        few_keys = window_keys * self._factor <= records
        backlog = behind >= records
        self.size = self.large if records and few_keys and backlog else self.small
        return self.size
