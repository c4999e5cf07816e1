"""The snapshot's SQLite writes in a child process, so a refresh never queues for the worker's
interpreter lock.

Python's sqlite3 releases the GIL around every statement step and takes it back after each
one, and a refresh is thousands of steps (one per changed partition count, two per changed
row). With the main thread counting batches, each step waited for the lock, and a refresh took
many times as long as with the lock free (docs/performance.md).
:class:`SnapshotProcess` runs :class:`~bucket_app.snapshot.store.SnapshotStore` in
``python -m bucket_app.snapshot.process`` and has the same ``create``/``apply_records``
interface. The worker reads the changelog and keeps the snapshot's in-memory state; the child
gets the count records as they were read, raw, and decodes them itself: decoding in the worker
held its interpreter lock for every record read.

Frames are those of :mod:`bucket_app.sql.pool`. A request is one byte, ``C`` (create), ``O``
(open), ``A`` (apply) or ``M`` (the child's imported modules, answered as JSON). ``O`` is
followed by JSON: the changelog's (beginning, end) offsets per partition and the age a
snapshot may have to be resumed; it is answered with the
:class:`~bucket_app.snapshot.checkpoint.Checkpoint` as JSON. ``A`` is followed by the closing
time, the length and JSON of the checkpoint's offsets and progress, then each record as key length,
value length (-1 for a tombstone), key and value. ``C`` and ``A`` are answered with JSON: the
generation and the table's rows. Any request may be answered with an error instead (with its
kind: ``full`` when a full disk rolled the refresh back, ``diverged`` when only one file took
it). The child
exits when its stdin closes: a worker killed mid-refresh leaves the refresh to finish, and its
successor's child waits for that (the store's lock) before it opens the files.
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
from bucket_app.errors import ChildGone, SnapshotDiverged, SnapshotError, SnapshotFull
from bucket_app.snapshot.checkpoint import Checkpoint
from bucket_app.snapshot.codec import Progress, decode_records
from bucket_app.snapshot.store import SnapshotStore
from bucket_app.sql.pool import ChildProcess, read_frame, write_frame

# A refresh that takes longer than this is taken for a hung child (a catching-up refresh of
# 50,000 changes takes about a second).
APPLY_TIMEOUT_S = 300.0
# The child's scheduling priority below the worker's and the SQL children's: a refresh is
# background work, a query is someone waiting.
NICENESS = 5
_CREATE, _OPEN, _APPLY, _MODULES = b"C", b"O", b"A", b"M"
_RECORD = struct.Struct(">Ii")  # key length, value length or -1
# an apply request's closing time and the length of its checkpoint JSON, before its records
_HEAD = struct.Struct(">dI")
# the errors the worker tells apart (a full disk is retried), by the name in an error answer
_KINDS: dict[type[SnapshotError], str] = {SnapshotFull: "full", SnapshotDiverged: "diverged"}
_ERRORS: dict[str, type[SnapshotError]] = {kind: error for error, kind in _KINDS.items()}


class SnapshotProcess:
    """:class:`~bucket_app.snapshot.store.SnapshotStore`'s ``create``, ``open`` and
    ``apply_records`` in a child."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.path = Path(config["path"])
        self.child = ChildProcess("bucket_app.snapshot.process", config)
        self.generation = 0
        self.rows = 0
        self._closing_s = NEVER
        # the checkpoint's offsets and progress as last stored (None: not known)
        self._offsets: Mapping[int, int] | None = None
        self._progress: Mapping[int, Progress] | None = None

    def create(self) -> None:
        self.generation = self._answer(self._call(_CREATE))
        self._closing_s = NEVER
        self._offsets = self._progress = None

    def open(self, changelog: Mapping[int, tuple[int, int]],
             max_age_s: float | None = None, topic_id: str | None = None) -> Checkpoint:
        """Resume the snapshot on disk or rebuild it (:meth:`SnapshotStore.open`)."""
        request = {"changelog": {str(p): list(b) for p, b in changelog.items()},
                   "max_age_s": max_age_s, "topic_id": topic_id}
        checkpoint = Checkpoint.from_json(self._call(_OPEN + orjson.dumps(request)))
        self.generation, self.rows = checkpoint.generation, checkpoint.rows
        self._closing_s = checkpoint.closing_s
        self._offsets = dict(checkpoint.offsets) if checkpoint.resumed else None
        self._progress = dict(checkpoint.progress) if checkpoint.resumed else None
        return checkpoint

    def apply_records(self, records: Mapping[bytes, bytes | None],
                      closing_s: float = NEVER, offsets: Mapping[int, int] | None = None,
                      progress: Mapping[int, Progress] | None = None) -> int:
        """Apply raw count records (key -> value, None = tombstone), the closing time and the
        checkpoint's changelog offsets and source progress (None: unchanged) in one
        transaction; return the generation."""
        moved = ((offsets is not None and offsets != self._offsets)
                 or (progress is not None and progress != self._progress))
        if not records and closing_s <= self._closing_s and not moved:
            return self.generation
        proc = self.child.proc
        if proc is None or proc.poll() is not None:
            # a new child would start without the snapshot this one had built
            status = "never started" if proc is None else f"exit status {proc.poll()}"
            raise SnapshotError(f"the snapshot process ended ({status})")
        head = orjson.dumps({
            "offsets": None if offsets is None else {str(p): o for p, o in offsets.items()},
            "progress": None if progress is None else {
                str(p): [g.offset, g.watermark_s, g.seen_at_s] for p, g in progress.items()}})
        parts = [_APPLY, _HEAD.pack(closing_s, len(head)), head]
        pack = _RECORD.pack
        for key, value in records.items():
            if value is None:
                parts += (pack(len(key), -1), key)
            else:
                parts += (pack(len(key), len(value)), key, value)
        self.generation = self._answer(self._call(b"".join(parts)))
        self._closing_s = max(self._closing_s, closing_s)
        if offsets is not None:
            self._offsets = dict(offsets)
        if progress is not None:
            self._progress = dict(progress)
        return self.generation

    def close(self) -> None:
        self.child.stop()

    def modules(self) -> list[str]:
        """The names of the modules the child has imported (it must import neither Kafka's
        clients nor Faust: a test holds it to that)."""
        return [str(name) for name in self._call(_MODULES)["modules"]]

    def _call(self, request: bytes) -> dict[str, Any]:
        try:
            (answer,) = self.child.call(request, APPLY_TIMEOUT_S, replies=1)
        except ChildGone as exc:
            self.child.stop()
            raise SnapshotError(f"the snapshot process ended ({exc})") from None
        reply: dict[str, Any] = orjson.loads(answer)
        if "error" in reply:
            raise _ERRORS.get(reply.get("kind", "error"), SnapshotError)(reply["error"])
        return reply

    def _answer(self, reply: Mapping[str, Any]) -> int:
        self.rows = int(reply["rows"])
        return int(reply["generation"])


def unpack_records(payload: memoryview) -> Iterator[tuple[bytes, bytes | None]]:
    """The records of an apply request, after its head."""
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
            answer = _serve_one(store, frame)
        except Exception as exc:  # noqa: BLE001 - the worker gets it as SnapshotError
            answer = {"error": f"{type(exc).__name__}: {exc}",
                      "kind": next((kind for error, kind in _KINDS.items()
                                    if isinstance(exc, error)), "error")}
        write_frame(answers, orjson.dumps(answer))


def _serve_one(store: SnapshotStore, frame: bytes) -> dict[str, Any]:
    kind = frame[:1]
    if kind == _MODULES:
        return {"modules": sorted(sys.modules)}
    if kind == _CREATE:
        store.create()
    elif kind == _OPEN:
        request = orjson.loads(frame[1:])
        changelog = {int(p): (int(b), int(e)) for p, (b, e) in request["changelog"].items()}
        return store.open(changelog, request["max_age_s"],
                          topic_id=request.get("topic_id")).to_json()
    else:
        closing_s, head_length = _HEAD.unpack_from(frame, 1)
        start = 1 + _HEAD.size
        head = orjson.loads(frame[start:start + head_length])
        offsets = head["offsets"]
        progress = head["progress"]
        records = unpack_records(memoryview(frame)[start + head_length:])
        store.apply(decode_records(records), closing_s,
                    None if offsets is None else {int(p): int(o) for p, o in offsets.items()},
                    None if progress is None else {
                        int(p): Progress(int(o), float(w), float(s))
                        for p, (o, w, s) in progress.items()})
    return {"generation": store.generation, "rows": store.rows}


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
