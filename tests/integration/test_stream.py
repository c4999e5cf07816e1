"""GET /api/v1/stream on a real worker and broker: produced messages arrive as row events.

Expected counts are computed here from the timestamps the test chose. A plain socket reads the
stream (no SSE library), as a browser's EventSource would: rows are absolute counts, so the
test keeps the latest count per (server, topic, bucket) and compares that with its own sums.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections import Counter
from typing import Any

import pytest

from tests.support.kafka import Record, create_topic, produce, unique

pytestmark = pytest.mark.integration

INTERVAL = 20


class SseReader:
    """Reads Server-Sent Events from a raw HTTP/1.1 response on a socket."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.text = b""
        self.last_id: str | None = None

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        return data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _more(self) -> None:
        if not self.chunked:
            self.text += self.buffer or self._recv()
            self.buffer = b""
            return
        size = int(self._until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            raise EOFError
        while len(self.buffer) < size + 2:
            self.buffer += self._recv()
        self.text += self.buffer[:size]
        self.buffer = self.buffer[size + 2:]

    def event(self, timeout_s: float) -> dict[str, Any] | None:
        """The next dispatched event, or None if none came in ``timeout_s``."""
        self.sock.settimeout(timeout_s)
        try:
            while True:
                while b"\n\n" not in self.text:
                    self._more()
                block, self.text = self.text.split(b"\n\n", 1)
                event: dict[str, Any] = {}
                for line in block.decode().split("\n"):
                    field, _, value = line.partition(": ")
                    if field == "id":
                        self.last_id = value
                    elif field in ("event", "data"):
                        event[field] = value
                if "data" in event:
                    event["id"] = self.last_id
                    return event
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


def collect(reader: SseReader, into: dict[tuple, int], until: dict[tuple, int],
            timeout_s: float) -> float:
    """Read row events into ``into`` (latest count per key) until it holds ``until``;
    return when that happened (time.monotonic())."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(into.get(k) == v for k, v in until.items()):
            return time.monotonic()
        event = reader.event(max(deadline - time.monotonic(), 0.05))
        if event is None:
            continue
        assert event.get("event") == "row", event
        row = json.loads(event["data"])
        into[(row["server_name"], row["topic"], row["bucket_start"])] = row["count"]
    missing = {k: (into.get(k), v) for k, v in until.items() if into.get(k) != v}
    raise AssertionError(f"rows not streamed in {timeout_s}s (got, wanted): {missing}")


def messages(base: int, n: int, server: str) -> tuple[list[Record], Counter[tuple]]:
    records, expected = [], Counter()
    for i in range(n):
        ts = base + (i * 7) % 60
        records.append(Record(json.dumps({"origin_server": server, "topic": f"t{i % 2}",
                                          "timestamp": ts}).encode(), i % 6))
        expected[(server, f"t{i % 2}", math.floor(ts / INTERVAL) * INTERVAL)] += 1
    return records, expected


def test_rows_stream_live_and_a_resumed_stream_misses_nothing(make_worker):
    topic = unique("stream")
    create_topic(topic, 6)
    worker = make_worker(topic).start()
    base = math.floor((time.time() - 600) / INTERVAL) * INTERVAL
    records, expected = messages(base, 60, "before")
    worker.wait_caught_up(produce(topic, records))

    reader = SseReader(worker.port, "/api/v1/stream")
    try:
        assert reader.status == 200
        assert reader.headers["content-type"].startswith("text/event-stream")
        seen: dict[tuple, int] = {}
        collect(reader, seen, dict(expected), 10)  # the full current set first
        assert seen == dict(expected)

        more, added = messages(base, 40, "live")
        produce(topic, more)
        produced_at = time.monotonic()
        done_at = collect(reader, seen, dict(added), 10)
        # the refresh interval is 0.5 s; "within about a second of the refresh"
        assert done_at - produced_at < 3.0, done_at - produced_at
        resume_id = reader.last_id
        assert resume_id
    finally:
        reader.close()

    # while no stream is open, more messages; a stream resuming from the last id gets them
    later, after = messages(base + 60, 30, "later")
    worker.wait_caught_up(produce(topic, later))
    resumed = SseReader(worker.port, "/api/v1/stream?server_name=later",
                        headers={"Last-Event-ID": resume_id})
    try:
        got: dict[tuple, int] = {}
        collect(resumed, got, dict(after), 10)
        assert got == dict(after)
        assert resumed.event(1.0) is None  # filtered: nothing else
    finally:
        resumed.close()


def test_worker_stops_promptly_with_a_stream_open(make_worker):
    topic = unique("stream-stop")
    create_topic(topic, 6)
    worker = make_worker(topic).start()
    reader = SseReader(worker.port, "/api/v1/stream")
    try:
        assert reader.status == 200
        started = time.monotonic()
        worker.stop()
        stopped_in = time.monotonic() - started
        assert worker.proc.returncode == 0, worker.tail()
        # aiohttp would wait up to 60 s for a running handler; the stream ends at shutdown
        assert stopped_in < 20, stopped_in
        with pytest.raises(EOFError):
            while True:
                reader.event(5)
    finally:
        reader.close()


def test_page_meta_and_assets_are_served(make_worker):
    topic = unique("page")
    create_topic(topic, 6)
    worker = make_worker(topic).start()
    page = worker.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert b"/static/dashboard.js" in page.body
    for path, kind in [("/static/dashboard.js", "text/javascript"),
                       ("/static/vendor/uPlot.iife.min.js", "text/javascript"),
                       ("/static/dashboard.css", "text/css")]:
        answer = worker.get(path)
        assert answer.status == 200 and answer.headers["Content-Type"].startswith(kind), path
    missing = worker.get("/static/../settings.ini")
    assert missing.status == 404 and missing.json()["status"] == 404
    meta = worker.get("/api/v1/meta").json()
    assert meta["columns"] == ["server_name", "topic"]
    assert meta["bucket_interval_s"] == INTERVAL and meta["table"] == "default"
