"""Property tests of the HTTP parameter parsers: any text is a value or ``Invalid``, which
``declare.parse_args`` answers as 400."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from bucket_app.counting.buckets import MAX_TS_S, MIN_TS_S
from bucket_app.web.declare import Invalid
from bucket_app.web.params import (
    MAX_WAIT_MS,
    encode_token,
    parse_limit,
    parse_min_offsets,
    parse_time,
    parse_wait_ms,
)
from tests.support.fuzz import awkward_text

params = st.one_of(awkward_text, st.text(max_size=40), st.integers().map(str),
                   st.sampled_from(["0", "-1", "1" * 5000, "1e3", "0:1,1:2", "0:", ":", ",",
                                    "WzEsMl0", "W10", "e30", "bnVsbA", "٣", "2026-11-28"]))


def value_or_invalid(parse: Any, raw: str) -> Any:
    try:
        return parse(raw)
    except Invalid as exc:
        assert exc.message and "\n" not in exc.message
        return exc


@given(params)
@example("1" * 5000)  # int() refuses over 4300 digits with a ValueError
def test_time_params_are_times_in_range_or_invalid(raw: str) -> None:
    answer = value_or_invalid(parse_time("from"), raw)
    assert isinstance(answer, Invalid) or MIN_TS_S <= answer <= MAX_TS_S


@given(params)
def test_limits_are_positive_or_invalid(raw: str) -> None:
    answer = value_or_invalid(parse_limit, raw)
    assert isinstance(answer, Invalid) or answer >= 1


@given(params)
def test_wait_ms_is_within_bounds_or_invalid(raw: str) -> None:
    answer = value_or_invalid(parse_wait_ms, raw)
    assert isinstance(answer, Invalid) or 0 <= answer <= MAX_WAIT_MS


@given(params, st.integers(1, 64))
@example("0:1,0:2", 1)
@example("WzEsMl0", 1)  # a token for two partitions, one partition now
def test_min_offsets_name_existing_partitions_or_invalid(raw: str, partitions: int) -> None:
    answer = value_or_invalid(parse_min_offsets(partitions), raw)
    if not isinstance(answer, Invalid):
        assert all(isinstance(o, int) and 0 <= p < partitions for p, o in answer.items())


@given(st.dictionaries(st.integers(0, 63), st.integers(-1, 2**62), min_size=1))
def test_position_tokens_read_back_as_their_offsets(position: dict[int, int]) -> None:
    dense = dict(enumerate(position[p] for p in sorted(position)))
    assert parse_min_offsets(len(position))(encode_token(position)) == dense
