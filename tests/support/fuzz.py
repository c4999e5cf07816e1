"""Shared pieces of the property (fuzz) tests: strategies, careless JSON, and the oracles.

The ``test_fuzz_*`` modules check that nothing a producer or an operator can write escapes as
an unexpected exception: a bad message becomes a :class:`~bucket_app.errors.BadInput` with a
stable ``reason``, a bad settings file a one-line :class:`~bucket_app.errors.SettingsError`,
and a good message lands where an independent, simpler oracle says it should. The oracles
here (:func:`epoch_oracle`, :func:`iso_oracle`, :func:`lookup_oracle`, :func:`strict_json`)
share no code with the package.

The hypothesis profiles (``ci``, derandomized, the default; ``explore`` for hunting) are
registered in ``tests/conftest.py``, so every hypothesis test gets them whichever module it
imports: ``HYPOTHESIS_PROFILE=explore .venv/bin/pytest tests/unit -k fuzz``. Any failure found
there goes back into the suite as an ``@example``.
"""

from __future__ import annotations

import json
from datetime import datetime
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

from bucket_app.counting.buckets import MAX_TS_S, MIN_TS_S
from bucket_app.counting.decode import load_avro_schema
from tests.support.settings import AVRO_SCHEMA_PATH

INT64 = 2**63 - 1

# Text with what breaks naive code: NUL, other controls, astral and combining characters,
# lone surrogates (not encodable as UTF-8), dots (path separators for field maps).
awkward_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.sampled_from("\x00\n\r\t.é😀\u0301\u2028\ufeff a"), max_size=8),
    st.sampled_from(["", ".", "a.b", "..", "\x00", "\udcff", "NaN", "1e400", "-0"]),
)

# Numbers at the edges: int64 limits, beyond them, floats with NaN and infinities.
edge_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, INT64, -INT64 - 1, 2**64, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 5e-324,
                     1.7976931348623157e308]),
)

scalars = st.one_of(st.none(), st.booleans(), edge_numbers, awkward_text)


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(awkward_text, inner, max_size=4))


# Any JSON-ish value, nested a few levels: dicts (keys of awkward text) and lists.
json_values = st.recursive(scalars, _json_containers, max_leaves=12)


# What a decoder can hand over: orjson refuses lone surrogates, NaN and infinities, and reads
# integers beyond 64 bits as floats; Avro strings are UTF-8 and its longs 64-bit.
decodable_text = awkward_text.filter(lambda text: not any(
    0xD800 <= ord(char) <= 0xDFFF for char in text))
decodable_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-INT64 - 1, max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), decodable_text)


def _decodable_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4),
                     st.dictionaries(decodable_text, inner, max_size=4))


decodable_values = st.recursive(decodable_scalars, _decodable_containers, max_leaves=12)


def dumps(obj: Any) -> bytes:
    """JSON bytes as a careless producer writes them: raw UTF-8, with NaN/Infinity tokens and
    lone surrogates (encoded as if they were characters) where the value holds them."""
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def has_surrogate(data: bytes) -> bool:
    """Whether ``dumps`` wrote a surrogate, which no UTF-8 reader accepts."""
    text = data.decode("utf-8", "surrogatepass")
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def floor_start(ts: float | int, interval_s: int) -> int:
    """Oracle for the bucket start: exact rational floor, no float division involved."""
    return (Fraction(ts) // interval_s) * interval_s


def deeply_nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# --- oracles: the plain reading of a message ---------------------------------------------

def epoch_oracle(value: Any) -> float | str:
    """What an epoch time is: an int or float (not bool), or a number spelled as text
    (Python's float() spelling without "_"), finite and within years 1..9999."""
    if isinstance(value, datetime):
        return "datetime"  # checked by the ISO oracle below
    if type(value) in (int, float):
        number = value
    elif isinstance(value, str) and "_" not in value:
        try:
            number = float(value)
        except ValueError:
            return "bad_time"
    else:
        return "bad_time"
    if not MIN_TS_S <= number <= MAX_TS_S:  # False for NaN
        return "bad_time"
    return float(number)


def iso_oracle(dt: datetime) -> Fraction:
    """Seconds since the epoch, exactly, from the fields of ``dt`` (naive = UTC)."""
    days = dt.toordinal() - datetime(1970, 1, 1).toordinal()
    seconds = Fraction(days * 86_400 + dt.hour * 3600 + dt.minute * 60 + dt.second)
    seconds += Fraction(dt.microsecond, 10**6)
    offset = dt.utcoffset()
    if offset is not None:
        seconds -= Fraction(offset.days * 86_400 + offset.seconds) + Fraction(
            offset.microseconds, 10**6)
    return seconds


def lookup_oracle(msg: Any, path: str) -> Any:
    """A literal key wins; else a dotted path walks nested objects; missing is None."""
    if path in msg:
        return msg[path]
    if "." not in path:
        return None
    node = msg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


SCHEMA = load_avro_schema(AVRO_SCHEMA_PATH)


def strict_json(data: bytes) -> Any:
    """The oracle: the standard library's reading of strict JSON (RFC 8259: UTF-8, no NaN or
    Infinity tokens); ValueError for anything else."""
    if has_surrogate(data):
        raise ValueError("not UTF-8")
    return json.loads(data, parse_constant=_refuse)


def _refuse(token: str) -> None:
    raise ValueError(token)
