"""The snapshot's SQLite writes in a child process, so a refresh never queues for the worker's
interpreter lock.

Python's sqlite3 releases the GIL around every statement step and takes it back after each
one, and a refresh is thousands of steps (one per changed partition count, two per changed
row). With the main thread counting batches, each step waited for the lock: a refresh of 4,000
changes took 356 ms (p50, 1,119 ms at worst) against 31 ms with the lock free, measured with a
busy thread beside it, and in the worker counts became visible 0.2-0.4 s later for it.
:class:`SnapshotProcess` runs :class:`~bucket_app.snapshot.reader.SnapshotStore` in
``python -m bucket_app.snapshot.process`` and has the same ``create``/``apply_records``
interface. The worker reads the changelog and keeps the snapshot's in-memory state; the child
gets the count records as they were read, raw, and decodes them itself: decoding in the worker
took its interpreter lock for about 2.5 µs a record, at up to 110,000 records a second.

Frames are those of :mod:`bucket_app.sql.pool`. A request is one byte, ``C`` (create) or ``A``
(apply), then for ``A`` each record as key length, value length (-1 for a tombstone), key and
value. The answer is JSON: the generation and the table's rows, or an error. The child exits
when its stdin closes.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from bucket_app.counting.lifecycle import NEVER
from bucket_app.errors import ChildGone, SnapshotError
from bucket_app.snapshot.reader import SnapshotStore, decode_records
from bucket_app.sql.pool import ChildProcess, read_frame, write_frame

# A refresh that takes longer than this is taken for a hung child (a catching-up refresh of
# 50,000 changes takes about a second).
APPLY_TIMEOUT_S = 300.0
# The child's scheduling priority below the worker's and the SQL children's: a refresh is
# background work, a query is someone waiting.
NICENESS = 5
_CREATE, _APPLY = b"C", b"A"
_RECORD = struct.Struct(">Ii")  # key length, value length or -1
_CLOSING = struct.Struct(">d")  # an apply request's closing time, before its records


class SnapshotProcess:
    """:class:`~bucket_app.snapshot.reader.SnapshotStore`'s ``create`` and ``apply_records`` in a
    child."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.path = Path(config["path"])
        self.child = ChildProcess("bucket_app.snapshot.process", config)
        self.generation = 0
        self.rows = 0
        self._closing_s = NEVER

    def create(self) -> None:
        self.generation = self._call(_CREATE)
        self._closing_s = NEVER

    def apply_records(self, records: Mapping[bytes, bytes | None],
                      closing_s: float = NEVER) -> int:
        """Apply raw count records (key -> value, None = tombstone) and the closing time in
        one transaction; return the generation."""
        if not records and closing_s <= self._closing_s:
            return self.generation
        proc = self.child.proc
        if proc is None or proc.poll() is not None:
            # a new child would start without the snapshot this one had built
            status = "never started" if proc is None else f"exit status {proc.poll()}"
            raise SnapshotError(f"the snapshot process ended ({status})")
        parts = [_APPLY, _CLOSING.pack(closing_s)]
        pack = _RECORD.pack
        for key, value in records.items():
            if value is None:
                parts += (pack(len(key), -1), key)
            else:
                parts += (pack(len(key), len(value)), key, value)
        self.generation = self._call(b"".join(parts))
        self._closing_s = max(self._closing_s, closing_s)
        return self.generation

    def close(self) -> None:
        self.child.stop()

    def _call(self, request: bytes) -> int:
        try:
            (answer,) = self.child.call(request, APPLY_TIMEOUT_S, replies=1)
        except ChildGone as exc:
            self.child.stop()
            raise SnapshotError(f"the snapshot process ended ({exc})") from None
        reply = orjson.loads(answer)
        if "error" in reply:
            raise SnapshotError(reply["error"])
        self.rows = int(reply["rows"])
        return int(reply["generation"])


def unpack_records(payload: memoryview) -> Iterator[tuple[bytes, bytes | None]]:
    """The records of an apply request, after its first byte."""
    offset, end, unpack = 0, len(payload), _RECORD.unpack_from
    while offset < end:
        key_length, value_length = unpack(payload, offset)
        offset += _RECORD.size
        key = bytes(payload[offset:offset + key_length])
        offset += key_length
        if value_length < 0:
            yield key, None
        else:
            yield key, bytes(payload[offset:offset + value_length])
            offset += value_length


def serve(store: SnapshotStore, requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child's loop: one request frame in, one answer frame out, until EOF."""
    while (frame := read_frame(requests)) is not None:
        try:
            if frame[:1] == _CREATE:
                store.create()
                generation = store.generation
            else:
                (closing_s,) = _CLOSING.unpack_from(frame, 1)
                records = unpack_records(memoryview(frame)[1 + _CLOSING.size:])
                generation = store.apply(decode_records(records), closing_s)
        except Exception as exc:  # noqa: BLE001 - the worker gets it as SnapshotError
            write_frame(answers, orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}))
            continue
        write_frame(answers, orjson.dumps({"generation": generation, "rows": store.rows}))


def main() -> None:
    # As for the SQL children: the worker decides when we stop, by closing our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICENESS)
    store = SnapshotStore(**orjson.loads(sys.argv[1]))
    try:
        serve(store, sys.stdin.buffer, sys.stdout.buffer)
    finally:
        store.close()


if __name__ == "__main__":
    main()
