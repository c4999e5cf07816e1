"""Acknowledged offsets kept as runs, for :class:`bucket_app.seam.consumer.SeamConsumer`.

Faust keeps every acknowledged offset of a partition as an int in a list and a set until the
next commit: at a few hundred thousand records a second, with a commit every few seconds, a
million ints and a set of a million entries made and freed per commit, on the counting loop,
for a question ("one past the first run of consecutive offsets") that a batch without holes
answers with two numbers. :class:`Runs` holds those two numbers per batch.
"""

from __future__ import annotations

from bisect import bisect_left


class Runs:
    """Runs ``[first, last]`` of acknowledged offsets (inclusive): sorted, disjoint, and never
    adjacent (adjacent runs are merged), so the first run is the whole consecutive prefix."""

    __slots__ = ("spans",)

    def __init__(self) -> None:
        self.spans: list[list[int]] = []

    def __bool__(self) -> bool:
        return bool(self.spans)

    def add(self, first: int, last: int) -> bool:
        """Add the offsets ``first..last``; False (nothing added) when any is already here."""
        spans = self.spans
        if not spans or first > spans[-1][1]:  # the usual case: after everything so far
            if spans and first == spans[-1][1] + 1:
                spans[-1][1] = last
            else:
                spans.append([first, last])
            return True
        at = bisect_left(spans, first, key=lambda span: span[0])
        if (at > 0 and spans[at - 1][1] >= first) or (at < len(spans) and spans[at][0] <= last):
            return False
        spans.insert(at, [first, last])
        if at + 1 < len(spans) and spans[at + 1][0] == last + 1:
            spans[at][1] = spans.pop(at + 1)[1]
        if at > 0 and spans[at - 1][1] + 1 == first:
            spans[at - 1][1] = spans.pop(at)[1]
        return True

    def head(self) -> tuple[int, int]:
        """The first run: the consecutive offsets from the lowest one acknowledged."""
        first, last = self.spans[0]
        return first, last

    def drop_head(self) -> None:
        del self.spans[0]

    def offsets(self) -> list[range]:
        """Every offset held, run by run."""
        return [range(first, last + 1) for first, last in self.spans]
