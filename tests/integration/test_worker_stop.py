"""A clean stop leaves nothing behind: no child process, thread pool or SQLite handle.

The worker owns its parts (:mod:`bucket_app.parts`): the SQL processes, the snapshot process,
the reader's and the queries' threads. One test starts a real worker (``faust -A bucket_app
worker``) on the real broker, counts messages, SIGTERMs it and looks in /proc for its children
the moment it has exited (children that only noticed their parent's end a moment later would
still be there). The other starts and stops the parts in this process and checks each of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bucket_app.kafka.recovery import RecoveryProgress
from bucket_app.parts import Parts
from bucket_app.settings import Settings, load
from bucket_app.snapshot.reader import changelog_topic
from bucket_app.web.service import Freshness
from tests.support.kafka import Record, create_topic, produce, unique
from tests.support.worker import Worker, counts_of

pytestmark = pytest.mark.integration

INTERVAL = 20


def children(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid`` (from /proc), with its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            # the command name (2nd field) is in parentheses and may hold spaces
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = command_line(child)
                frontier.append(child)
    return {child: line for child, line in found.items() if line}


def command_line(pid: int) -> str:
    """The process's command line; empty once it has exited (a zombie has none either)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_sigterm_leaves_no_child_process_behind(make_worker: Any) -> None:
    topic = unique("stop")
    create_topic(topic, 2)
    worker = make_worker(topic, partitions=2).start()
    base = (int(time.time()) // INTERVAL - 10) * INTERVAL
    records = [Record(json.dumps({"origin_server": f"s{i % 3}", "topic": "t",
                                  "timestamp": base + i}).encode(), i % 2) for i in range(90)]
    worker.wait_caught_up(produce(topic, records))
    expected = Counter((f"s{i % 3}", "t", base + i - (base + i) % INTERVAL) for i in range(90))
    assert counts_of(worker) == dict(expected)
    assert worker.proc is not None
    running = children(worker.proc.pid)
    # the SQL processes (two at least) and the snapshot process
    assert sum("bucket_app.sql.pool" in line for line in running.values()) >= 2, running
    assert sum("bucket_app.snapshot.process" in line for line in running.values()) == 1, running
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0, worker.tail()
    left = {pid: line for pid in running if (line := command_line(pid))}
    assert not left, f"left running after a clean stop: {left}\n{worker.tail()}"


def settings_for(tmp_path: Path, topic: str) -> Settings:
    """The settings a test worker of ``topic`` would have (tests.support.worker)."""
    worker = Worker(tmp_path, topic=topic, app_id=unique("parts"), partitions=2)
    worker.write_settings()
    return load(worker.settings_path, {})


class Tasks:
    """What :meth:`Parts.start` needs of the app: tasks on the running loop."""

    def add_future(self, coro: Any) -> asyncio.Future[Any]:
        return asyncio.ensure_future(coro)


def open_files(prefix: Path) -> list[str]:
    """This process's open files whose path starts with ``prefix``."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(prefix)):
            found.append(target)
    return found


def test_the_parts_close_their_processes_threads_and_files(tmp_path: Path) -> None:
    topic = unique("parts")
    settings = settings_for(tmp_path, topic)
    create_topic(topic, 2)
    create_topic(changelog_topic(settings), 2)
    threads_before = {t.ident for t in threading.enumerate()}
    asyncio.run(start_query_stop(tmp_path, settings))
    left = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert left == [], left
    assert open_files(tmp_path) == []


async def start_query_stop(tmp_path: Path, settings: Settings) -> None:
    processor: Any = SimpleNamespace(
        counter=SimpleNamespace(batches=0, counted=0, replayed=0, late=0, dead_letters=0,
                                skipped={}),
        assignment={"ready": True, "assigned": []})
    parts = Parts(settings, 2, processor, RecoveryProgress(), lambda: None)
    await parts.start(Tasks())  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while not parts.reader.state.started:  # the snapshot file is open, in its child
        assert time.monotonic() < deadline, "the snapshot did not load"
        await asyncio.sleep(0.1)
    request: Any = SimpleNamespace(remote="127.0.0.1")
    result = await parts.service.query(request, 'SELECT count(*) AS n FROM "default"',
                                       fresh=Freshness(wait_ms=10_000))
    assert result.rows is not None
    running = children(os.getpid())
    assert sum("bucket_app.sql.pool" in line for line in running.values()) >= 2, running
    assert sum("bucket_app.snapshot.process" in line for line in running.values()) == 1
    assert open_files(tmp_path / "snapshot.sqlite3") == []  # only the children open it

    await parts.stop()
    assert not {pid for pid in running if command_line(pid)}, "a child outlived the stop"
    for pool in (parts.threads, parts.reader.executor):
        with pytest.raises(RuntimeError):  # shut down: takes no more work
            pool.submit(lambda: None)
    await parts.stop()  # a second stop does nothing
