"""What the contender processes share; imports nothing outside the standard library.

A contender gets its job as JSON in ``$BENCH_CONFIG`` (brokers, topic, ``ends``: the end offset of
each partition, ``result``: a file path, ``group``, ``state_dir``) and writes its result there:
the wall-clock times of the first message consumed and the last counted, the messages counted
and its own peak RSS.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def config() -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(os.environ["BENCH_CONFIG"])
    cfg["ends"] = {int(p): int(end) for p, end in cfg["ends"].items()}
    return cfg


def own_peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Progress:
    """Tracks the highest offset seen per partition until every partition reached its end."""

    def __init__(self, ends: dict[int, int]) -> None:
        self.remaining = {p: end - 1 for p, end in ends.items() if end > 0}
        self.first: float | None = None
        self.last: float | None = None
        self.messages = 0

    def seen(self, partition: int, offset: int) -> bool:
        """Record one counted message; True once every partition is done."""
        now = time.time()
        if self.first is None:
            self.first = now
        self.messages += 1
        target = self.remaining.get(partition)
        if target is not None and offset >= target:
            del self.remaining[partition]
            if not self.remaining:
                self.last = now
        return not self.remaining

    def begin(self) -> None:
        """The first message is consumed now (for :meth:`batch`, before counting any)."""
        if self.first is None:
            self.first = time.time()

    def batch(self, partition: int, offset: int, count: int) -> bool:
        """Record ``count`` counted messages of ``partition``, the last at ``offset``; True once
        every partition is done. Once per batch: the leanest loop pays no clock per message."""
        self.messages += count
        target = self.remaining.get(partition)
        if target is not None and offset >= target:
            del self.remaining[partition]
            if not self.remaining:
                self.last = time.time()
        return not self.remaining

    def write(self, path: str, **extra: Any) -> None:
        result = {"first": self.first, "last": self.last, "messages": self.messages,
                  "peak_rss_mb": own_peak_rss_mb(), **extra}
        Path(path + ".tmp").write_text(json.dumps(result))
        os.replace(path + ".tmp", path)
