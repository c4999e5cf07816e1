"""Acknowledged offsets kept as runs commit exactly as offsets kept one by one.

:class:`SeamConsumer` keeps a batch acknowledged without a hole as one run
(:mod:`bucket_app.seam.runs`) instead of an int per offset in Faust's ``_acked``; the offset it
commits must be the one Faust's structures give, through holes, redeliveries, gaps, commits,
revocations and Faust's own ``ack``.
"""

from __future__ import annotations

from collections import defaultdict

from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st
from intervaltree import IntervalTree

from bucket_app.seam.consumer import SeamConsumer
from bucket_app.seam.runs import Runs

TPX = TP("t", 0)


class _NoRuns(Runs):
    def add(self, first: int, last: int) -> bool:
        return False


class _Refusing(dict):
    """Runs that refuse every batch: the consumer keeps each offset in Faust's structures."""

    def setdefault(self, key, default=None):  # noqa: ARG002 - the consumer's Runs() is ignored
        return super().setdefault(key, _NoRuns())


def consumer(with_runs: bool) -> SeamConsumer:
    each = object.__new__(SeamConsumer)
    each._acked = defaultdict(list)
    each._acked_index = defaultdict(set)
    each._committed_offset = defaultdict(lambda: None)
    each._gap = defaultdict(IntervalTree)
    each._runs = {} if with_runs else _Refusing()
    each.acked_through = {}
    each._n_acked = 0
    return each


def pending(each: SeamConsumer) -> set[int]:
    held = set(each._acked[TPX])
    runs = each._runs.get(TPX)
    if runs:
        for span in runs.offsets():
            held.update(span)
    return held


def faust_ack(each: SeamConsumer, offset: int) -> None:
    """Faust's ``Consumer.ack`` for one offset (its per-message path)."""
    if offset not in each._acked_index[TPX]:
        each._acked_index[TPX].add(offset)
        each._acked[TPX].append(offset)
        each._n_acked += 1


step = st.one_of(
    # a batch: from an offset, this many records, with holes at these positions, after this
    # read offset (None: the first)
    st.tuples(st.just("batch"), st.integers(0, 80), st.integers(1, 12),
              st.sets(st.integers(1, 11), max_size=3), st.none() | st.integers(-2, 0)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("faust_ack"), st.integers(0, 90)),
    st.tuples(st.just("revoke")),
)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(step, max_size=25))
def test_runs_commit_as_offsets_one_by_one(steps):
    ours, theirs = consumer(True), consumer(False)
    for each in steps:
        if each[0] == "batch":
            _, start, n, holes, before = each
            offsets = [start + i for i in range(n) if i not in holes]
            previous = None if before is None else start - 1 + before
            arg = (range(offsets[0], offsets[-1] + 1)
                   if offsets[-1] - offsets[0] == len(offsets) - 1 else offsets)
            ours.ack_offsets(TPX, arg, previous)
            theirs.ack_offsets(TPX, list(offsets), previous)
        elif each[0] == "commit":
            got = ours._new_offset(TPX)
            assert got == theirs._new_offset(TPX)
            if got is not None:  # as Faust's commit records it
                ours._committed_offset[TPX] = theirs._committed_offset[TPX] = got
        elif each[0] == "faust_ack":
            faust_ack(ours, each[1])
            faust_ack(theirs, each[1])
        else:  # what Faust's on_partitions_revoked drops, and the seam with it
            for one in (ours, theirs):
                for attribute in (one._acked, one._acked_index, one._gap, one._runs):
                    attribute.pop(TPX, None)
        assert pending(ours) == pending(theirs)
    assert ours._new_offset(TPX) == theirs._new_offset(TPX)


def test_a_fetch_without_holes_keeps_no_int_per_offset():
    ours = consumer(True)
    ours.ack_offsets(TPX, range(0, 50_000), None)
    ours.ack_offsets(TPX, range(50_000, 100_000), 49_999)
    assert ours._acked[TPX] == [] and not ours._acked_index[TPX]
    assert ours._runs[TPX].spans == [[0, 99_999]]
    assert ours._new_offset(TPX) == 100_000
    assert ours._new_offset(TPX) is None


def test_runs_merge_and_refuse_overlaps():
    runs = Runs()
    assert runs.add(10, 19) and runs.add(30, 39) and runs.add(0, 4)
    assert runs.spans == [[0, 4], [10, 19], [30, 39]]
    assert not runs.add(15, 25) and not runs.add(4, 9) and not runs.add(39, 40)
    assert runs.add(20, 29)  # fills the hole between two runs: one run
    assert runs.spans == [[0, 4], [10, 39]]
    assert runs.add(5, 9) and runs.spans == [[0, 39]]
    assert runs.head() == (0, 39)
