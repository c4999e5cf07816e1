"""The configurations and record strategies the counting property tests and the kernel share.

Settings files are written once per run under a scratch directory (hypothesis tests cannot
share ``tmp_path``): :data:`FLAT` (the seed), :data:`NESTED` (dotted paths, 60 s buckets),
:data:`ISO` (ISO-8601 times, hourly), :data:`AVRO` (the example schema) and :data:`RETENTION`
(five minutes of retention, for the batch path). :func:`batch_values` draws records a producer
may send, good and bad; :func:`aliased_values` records equal in Python but not in JSON, which
:class:`JsonKeyed` keys apart as Faust's store does.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.support.fuzz import deeply_nested, dumps
from tests.support.settings import AVRO_SCHEMA_PATH, make_settings, scratch_dir

NOW = 1_795_828_000.0
BASE = scratch_dir("fuzz-counting")
COLUMNS_3 = {"server_name": "TEXT", "host": "TEXT", "bucket_start": "INTEGER",
             "bucket_end": "INTEGER", "count": "INTEGER"}
FLAT = make_settings(BASE / "flat")
NESTED = make_settings(BASE / "nested", msg_map={"origin_server": "server_name",
                                                 "meta.host": "host"},
                       schema=COLUMNS_3, bucket_field="meta.ts", bucket_interval="60")
ISO = make_settings(BASE / "iso", bucket_type="iso", bucket_interval="3600", clean_interval="1d")
AVRO = make_settings(BASE / "avro", msg_map={"origin_server": "server_name",
                                             "meta.host": "host"},
                     schema=COLUMNS_3, avro_val_schema=str(AVRO_SCHEMA_PATH))
RETENTION = make_settings(BASE / "batches", clean_interval="300s", clean_freq="1d")


def batch_values(now: int) -> st.SearchStrategy[bytes | None]:
    """Mostly well-formed records within and just past retention, some of every bad kind."""
    good = st.builds(
        lambda server, topic, ago, frac: json.dumps(
            {"origin_server": server, "topic": topic,
             "timestamp": now - ago - frac}).encode(),
        st.sampled_from(["a", "b", None, "é\x00"]), st.sampled_from(["t", 7]),
        st.integers(0, 700), st.sampled_from([0, 0.0, 0.5]))
    bad = st.one_of(
        st.sampled_from([b"not json", b"[1]", b"", None, b'{"timestamp": true}',
                         b'{"timestamp": "x"}', b'{"origin_server": "a"}',
                         json.dumps({"timestamp": now + 7200}).encode(),
                         json.dumps({"timestamp": now, "topic": {"b": 1, "a": [2]}}).encode(),
                         dumps({"timestamp": now, "topic": deeply_nested(300)})]),
        st.binary(max_size=10))
    return st.one_of(good, good, good, bad)


class JsonKeyed(dict):  # type: ignore[type-arg]
    """A table keyed as Faust's store is, by the key's JSON: ``True``, ``1`` and ``1.0`` are
    three keys here, as they are in RocksDB and the changelog (one in a plain dict)."""

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(dumps(key), default)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(dumps(key), value)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(dumps(key))


def aliased_values(now: int) -> st.SearchStrategy[bytes | None]:
    """Records whose mapped values are equal in Python but not in JSON (True, 1, 1.0)."""
    return st.builds(
        lambda server, ago: json.dumps({"origin_server": server, "topic": "t",
                                        "timestamp": now - ago}).encode(),
        st.sampled_from([True, 1, 1.0, False, 0, 0.0, "1"]), st.integers(0, 100))
