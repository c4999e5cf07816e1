"""The counts table's key layout, in one place: window-keys and progress keys.

A window-key follows Faust's windowed-table layout, ``((partition, *mapped_values), (start,
start + interval - 0.1))``, so Faust's own windowed readers and tooling understand it; its value
is ``[count, highest source offset counted]``. Each source partition's progress lives in the
same table under ``(PROGRESS_KEY, partition)`` as ``[offset, watermark]``: it shares the
changelog partition with that partition's counts, so a reader that has seen a progress record
has seen every count it covers.
"""

from __future__ import annotations

from typing import Any

# Faust's TumblingWindow stores a window as (start, start + size - 0.1); we write the same.
WINDOW_END_EPSILON_S = 0.1

PROGRESS_KEY = "__progress__"

WindowKey = tuple[tuple[Any, ...], tuple[float, float]]


def window(start: int, interval_s: int) -> tuple[float, float]:
    """The window of a bucket as Faust's TumblingWindow writes it."""
    # (start + interval) - 0.1 in Faust's order: start + 19.9 differs for start = -20
    return float(start), start + interval_s - WINDOW_END_EPSILON_S


def progress_key(partition: int) -> tuple[str, int]:
    """The table key of ``partition``'s progress (no window-key can take it)."""
    return (PROGRESS_KEY, partition)


def group_identity(key: WindowKey) -> tuple[Any, ...]:
    """What tells two window-keys apart in a batch as in the table: the key and its values'
    types (``True``, ``1`` and ``1.0`` are one dict key but three table keys)."""
    return (key, *map(type, key[0]))
