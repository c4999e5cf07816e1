"""FetchSizes: a large fetch only for a backlog whose fetches touch few window-keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bucket_app.kafka.fetchsize import FetchSizes

SMALL, LARGE = 2 * 1024 * 1024, 8 * 1024 * 1024


def test_a_backlog_of_few_keys_is_read_in_large_fetches():
    sizes = FetchSizes(SMALL, LARGE)
    assert sizes.size == SMALL
    # 20,000 records in 500 window-keys, a million behind them
    assert sizes.after(20_000, 500, 1_000_000) == LARGE
    assert sizes.size == LARGE


@pytest.mark.parametrize(("records", "keys", "behind", "why"), [
    (20_000, 20_000, 1_000_000, "every record a window-key of its own"),
    (20_000, 5_001, 1_000_000, "more than one window-key in four records"),
    (20_000, 500, 19_999, "less behind it than in it: a stream kept up with, not a backlog"),
    (0, 0, 1_000_000, "a fetch of markers only"),
])
def test_otherwise_the_next_fetch_is_small(records, keys, behind, why):
    sizes = FetchSizes(SMALL, LARGE)
    sizes.after(20_000, 500, 1_000_000)
    assert sizes.after(records, keys, behind) == SMALL, why


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**8))
def test_a_large_fetch_writes_no_more_window_keys_than_a_small_one_can(records, keys, behind):
    """The memory bound: what decided a large fetch had at most one window-key per
    ``LARGE // SMALL`` records, so a fetch of such records four times as large writes at
    most as many window-keys as a small fetch of records each of its own."""
    if FetchSizes(SMALL, LARGE).after(records, keys, behind) == LARGE:
        assert keys * (LARGE // SMALL) <= records and behind >= records > 0


def test_sizes_must_make_sense():
    with pytest.raises(ValueError, match="small <= large"):
        FetchSizes(LARGE, SMALL)
