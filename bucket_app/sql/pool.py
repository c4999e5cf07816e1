"""User SQL in child processes, so a query never queues for the worker's interpreter lock.

Python's sqlite3 releases the GIL around every ``sqlite3_step`` and takes it back for every row
and for every call of the progress handler. In the worker the main thread counts batches with
the GIL held, so an answer of a few hundred rows waited for the lock hundreds of times, and a
query SQLite ran in a millisecond took hundreds (docs/performance.md). A child process has its
own lock. :class:`SqlPool` keeps a few children
(``python -m bucket_app.sql.pool``), each running
:class:`~bucket_app.sql.sandbox.SqlSandbox` over the snapshot file, and hands each query to an
idle one over a pipe. The child sends back the rows already encoded as JSON, which the views
embed as an :class:`orjson.Fragment` without decoding.

Frames on the pipes are a 4-byte big-endian length and an orjson document. A child exits when
its stdin closes, so it never outlives the worker, even one killed with SIGKILL. A child that
dies or hangs past the time limit is replaced, and its query answers 503.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import orjson

from bucket_app.errors import ChildGone, ChildKilled, HttpError
from bucket_app.sql.sandbox import SqlSandbox, json_default, over_time_limit

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# A child gets this long beyond the query time limit before it counts as hung.
HANG_GRACE_S = 10.0


@dataclass(slots=True)
class EncodedResult:
    """A query answer whose rows are JSON already: embed ``rows`` in a response as is."""

    columns: list[str]
    rows: orjson.Fragment
    row_count: int
    truncated: bool
    elapsed_ms: float


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return payload


class ChildProcess:
    """One child process (``python -m module config``) and its two pipes; used by one thread
    at a time."""

    def __init__(self, module: str, config: Mapping[str, Any]) -> None:
        self.module = module
        self.config = dict(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own module, with our settings
            [sys.executable, "-m", self.module, orjson.dumps(self.config).decode()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def call(self, request: bytes, timeout_s: float, replies: int = 2) -> list[bytes]:
        """Send one request; return its ``replies`` answer frames, or raise ChildGone."""
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self.start()
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        # A hung child is killed; its closed pipe then ends the read below.
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.daemon = True
        watchdog.start()
        answers: list[bytes] = []
        try:
            write_frame(proc.stdin, request)
            while len(answers) < replies and (frame := read_frame(proc.stdout)) is not None:
                answers.append(frame)
        except OSError as exc:
            raise ChildGone(str(exc)) from exc
        finally:
            watchdog.cancel()
        if len(answers) < replies:
            if killed.is_set():
                raise ChildKilled(f"killed after {timeout_s:.1f} s")
            raise ChildGone(f"exit status {proc.poll()}")
        return answers


class SqlPool:
    """``size`` children over one snapshot file; ``execute`` is blocking and thread-safe."""

    def __init__(self, size: int, db_path: str, table: str, row_limit: int,
                 time_limit_ms: int) -> None:
        # Checked here, in the worker, rather than in a child at the first query.
        SqlSandbox(db_path, table, row_limit=row_limit, time_limit_ms=time_limit_ms)
        self.config = {"db_path": db_path, "table": table, "row_limit": row_limit,
                       "time_limit_ms": time_limit_ms}
        self.time_limit_ms = time_limit_ms
        self.timeout_s = time_limit_ms / 1000 + HANG_GRACE_S
        self._idle: queue.SimpleQueue[ChildProcess] = queue.SimpleQueue()
        self._children = [ChildProcess("bucket_app.sql.pool", self.config) for _ in range(size)]
        for child in self._children:
            self._idle.put(child)

    def start(self) -> None:
        """Start every child now rather than at its first query."""
        for child in self._children:
            if child.proc is None:
                child.start()

    def close(self) -> None:
        for child in self._children:
            child.stop()

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None,
                row_limit: int | None = None) -> EncodedResult:
        request = orjson.dumps({"sql": sql, "params": params, "row_limit": row_limit})
        child = self._idle.get()
        try:
            meta_frame, rows = child.call(request, self.timeout_s)
        except ChildKilled as exc:
            # Work SQLite cannot interrupt ran to the hard deadline: the query is over its time
            # limit like any other, not a failure worth retrying.
            log.warning("SQL child process %s running %r; starting another", exc, sql[:200])
            child.stop()
            raise over_time_limit(sql, self.time_limit_ms) from None
        except ChildGone as exc:
            log.warning("SQL child process ended (%s) running %r; starting another", exc,
                        sql[:200])
            child.stop()
            raise HttpError(503, "the query process ended; try again", sql=sql,
                            retry_after_s=1) from None
        finally:
            self._idle.put(child)
        meta = orjson.loads(meta_frame)
        if "error" in meta:
            error = meta["error"]
            raise HttpError(error["status"], error["message"], **error["context"])
        return EncodedResult(meta["columns"], orjson.Fragment(rows), meta["row_count"],
                             meta["truncated"], meta["elapsed_ms"])


def serve(sandbox: SqlSandbox, requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child's loop: one request frame in, a meta frame and a rows frame out, until EOF."""
    while (frame := read_frame(requests)) is not None:
        request = orjson.loads(frame)
        try:
            result = sandbox.execute(request["sql"], request["params"],
                                     row_limit=request["row_limit"])
        except HttpError as exc:
            error = {"status": exc.status, "message": exc.message, "context": exc.context}
            write_frame(answers, orjson.dumps({"error": error}, default=json_default))
            write_frame(answers, b"[]")
            continue
        except Exception as exc:  # noqa: BLE001 - a query must not end the process
            # Every input should be refused above with its own message; this one was not
            # foreseen. Refuse it (the client sent it) rather than die and restart a process.
            print(f"bucket_app SQL process: {type(exc).__name__}: {exc}", file=sys.stderr)
            error = {"status": 400, "message": f"the query could not run: "
                     f"{type(exc).__name__}: {exc}"[:500], "context": {}}
            write_frame(answers, orjson.dumps({"error": error}, default=json_default))
            write_frame(answers, b"[]")
            continue
        rows = orjson.dumps(result.rows, default=json_default)
        meta = {"columns": result.columns, "row_count": len(result.rows),
                "truncated": result.truncated, "elapsed_ms": result.elapsed_ms}
        write_frame(answers, orjson.dumps(meta))
        write_frame(answers, rows)


def main() -> None:
    # Ctrl-C in `make run` reaches the whole process group; the worker decides when we stop,
    # by closing our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sandbox = SqlSandbox(**orjson.loads(sys.argv[1]))
    serve(sandbox, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
