"""Compression codecs: every one Kafka defines is readable before a worker reads a record.

A producer chooses a batch's codec (``compression.type``: gzip, snappy, lz4, zstd; Java
producers and brokers often lz4 or zstd), and a topic can hold batches of all four. aiokafka
decompresses gzip with the standard library and the other three with cramjam, an optional
dependency (its ``lz4``/``snappy``/``zstd`` extras): without it the first such batch crashed
the worker's fetcher mid-stream. cramjam is pinned in requirements.lock and setup.cfg, and
:func:`check` stops start-up with one line naming a codec that still cannot be read.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import codec

from bucket_app.errors import MissingCodec

#: codec name -> whether aiokafka can read it here
CODECS: dict[str, Callable[[], bool]] = {
    "gzip": codec.has_gzip, "snappy": codec.has_snappy, "lz4": codec.has_lz4,
    "zstd": codec.has_zstd,
}


def missing(codecs: dict[str, Callable[[], bool]] | None = None) -> list[str]:
    """The codecs aiokafka cannot read with what is installed."""
    return [name for name, readable in (codecs or CODECS).items() if not readable()]


def check(codecs: dict[str, Callable[[], bool]] | None = None) -> None:
    """Raise :class:`MissingCodec`, naming them, unless every codec can be read."""
    unreadable = missing(codecs)
    if unreadable:
        raise MissingCodec(
            f"cannot read {', '.join(unreadable)}-compressed Kafka batches: aiokafka needs "
            "cramjam (pinned in requirements.lock; run make setup, or pip install -r "
            "requirements.lock)")
