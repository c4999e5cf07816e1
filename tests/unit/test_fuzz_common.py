"""Shared pieces of the property (fuzz) tests: the hypothesis profile, strategies, settings.

The ``test_fuzz_*`` modules check that nothing a producer or an operator can write escapes as
an unexpected exception: a bad message becomes a :class:`~bucket_app.errors.BadInput` with a
stable ``reason``, a bad settings file a one-line :class:`~bucket_app.errors.SettingsError`,
and a good message lands where an independent, simpler oracle says it should.

Profiles: ``ci`` (the default, used by ``make test``) is derandomized - the same examples on
every run and every machine, so a red CI run is reproducible and never flaky - with no example
database, so nothing is written into the tree. ``explore`` draws new random examples and many
more of them, for hunting: ``HYPOTHESIS_PROFILE=explore .venv/bin/pytest tests/unit -k fuzz``.
Any failure found there goes back into the suite as an ``@example``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bucket_app.settings import Settings, load
from tests.unit.test_settings import SEED_INI, SQLITE_SCHEMA, replace_line, write_config

settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile(
    "explore", max_examples=3000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[2]
AVRO_SCHEMA_PATH = REPO / "schemas" / "example.avsc"

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


def scratch_dir(prefix: str) -> Path:
    """A directory for module-level fixtures (hypothesis tests cannot share tmp_path),
    removed when the test run ends."""
    path = Path(tempfile.mkdtemp(prefix=f"bucket_app-{prefix}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_settings(directory: Path, *, ini: str = SEED_INI,
                  msg_map: dict[str, str] | None = None,
                  schema: dict[str, str] | None = None, **changes: str) -> Settings:
    """The seed's settings under ``directory``, with ``key = value`` lines replaced."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in changes.items():
        ini = replace_line(ini, key, value)
    if "data_dir" not in changes:
        ini = ini.replace("[HTTPEndpointSetting]\n",
                          f"[HTTPEndpointSetting]\ndata_dir = {directory}/data\n")
    path = write_config(directory, ini, msg_map or {"origin_server": "server_name",
                                                    "topic": "topic"},
                        schema or SQLITE_SCHEMA)
    return load(path, {})
