"""bucket_app workers as users start them: ``faust -A bucket_app worker``, one settings file each.

A :class:`Worker` writes ``settings.ini`` (with the two JSON schema files it names) into its own
directory, which is also the process's working directory, so its data directory, snapshot and
log (``worker.log``) are its own. Tests and the benchmark differ only in the settings and the
log level they pass.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import REPO
from tests.support.http import HttpAnswer, http, http_json
from tests.support.kafka import BROKERS, end_offsets
from tests.support.settings import MSG_MAP, SQLITE_SCHEMA


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    """One ``faust -A bucket_app worker`` process with its own settings file."""

    directory: Path
    topic: str
    app_id: str
    partitions: int = 6
    brokers: str = BROKERS
    # settings on top of the defaults below (any key of bucket_app.settings.KEYS)
    extra: dict[str, str] = field(default_factory=dict)
    msg_map: dict[str, str] = field(default_factory=lambda: dict(MSG_MAP))
    schema: dict[str, str] = field(default_factory=lambda: dict(SQLITE_SCHEMA))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # extra environment variables of the worker process (BUCKET_APP_SASL_PASSWORD, say)
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings_path(self) -> Path:
        return self.directory / "settings.ini"

    @property
    def log_path(self) -> Path:
        return self.directory / "worker.log"

    def write_settings(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "msg_map_schema.json").write_text(json.dumps(self.msg_map))
        (self.directory / "sqlite_schema.json").write_text(json.dumps(self.schema))
        keys = {
            "KafkaSettings": {"brokers": self.brokers, "topic": self.topic,
                              "avro_val_schema": "None", "partitions": str(self.partitions),
                              "app_id": self.app_id},
            "MsgSettings": {"bucket_interval": "20", "bucket_field": "timestamp",
                            "bucket_type": "epoch", "msg_map_schema": "msg_map_schema.json"},
            "HTTPEndpointSetting": {"sqlite_schema": "sqlite_schema.json",
                                    "sqlite_db": "snapshot.sqlite3", "sqlite_table": "default",
                                    "clean_interval": "7d", "clean_freq": "10m",
                                    "web_port": str(self.port), "snapshot_interval": "0.5s"},
        }
        for name, value in self.extra.items():
            keys[_section_of(name)][name] = value
        lines = []
        for section, values in keys.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {v}" for k, v in values.items())
            lines.append("")
        self.settings_path.write_text("\n".join(lines))

    def start(self, wait: bool = True) -> Worker:
        self.write_settings()
        # Only the settings file and ``env`` configure the worker: an inherited BUCKET_APP_<KEY>
        # would override a setting, and $PORT the web port.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BUCKET_APP_") and k != "PORT"}
        env.update(BUCKET_APP_SETTINGS=str(self.settings_path), TZ="UTC", PYTHONUNBUFFERED="1",
                   **self.env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "bucket_app", "worker", "-l", self.log_level,
             "--web-port", str(self.port), "--web-host", "127.0.0.1"],
            cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_healthy()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout_s: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            try:
                answer = http(self.url + "/health", timeout=2)
                if answer.status == 200 and answer.json()["worker"]["ready"]:
                    return answer.json()
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy in {timeout_s}s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def stop_timed(self, timeout_s: float = 60) -> float:
        """SIGTERM the worker; the seconds until it exited, which it must do with status 0."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout_s) == 0, self.tail()
        return time.monotonic() - started

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def get(self, path: str) -> HttpAnswer:
        return http(self.url + path)

    def health(self) -> dict[str, Any]:
        return self.get("/health").json()

    def poll_health(self, timeout_s: float = 5) -> dict[str, Any] | None:
        """``/health``, or None unless it answers 200 (still starting, say)."""
        try:
            answer: dict[str, Any] = http_json(self.url + "/health", timeout=timeout_s)
            return answer
        except OSError:
            return None

    def wait_caught_up(self, last_offsets: dict[int, int], timeout_s: float = 120) -> dict:
        """Wait until the snapshot reflects every source offset up to ``last_offsets``."""
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, (
                f"worker exited {self.proc and self.proc.returncode}:\n{self.tail()}")
            try:
                status = self.health()
            except OSError:  # still starting (or restarting) its web server
                time.sleep(0.3)
                continue
            reached = status.get("partitions", {})
            if status.get("caught_up") and all(
                reached.get(str(p), {}).get("offset", -1) >= off
                for p, off in last_offsets.items()
            ):
                return status
            time.sleep(0.3)
        raise AssertionError(f"not caught up to {last_offsets}: {status}\n{self.tail()}")


    def wait_complete(self, timeout_s: float = 10) -> dict[str, Any]:
        """``/health`` once it says ``complete`` (computed at each snapshot refresh: it follows
        ``caught_up`` by a refresh); fails with the last answer after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        status = self.health()
        while status["complete"] is not True and time.monotonic() < deadline:
            time.sleep(0.1)
            status = self.health()
        assert status["complete"] is True, status
        return status

    def wait_read_to_end(self, topic: str, partitions: int) -> dict[str, Any]:
        """``/health`` once the worker has read every offset of ``topic`` (its snapshot caught
        up and complete, no lag) and is still running."""
        ends = end_offsets(topic, partitions)
        self.wait_caught_up({p: end - 1 for p, end in ends.items() if end})
        health = self.wait_complete()
        assert all(p["lag"] == 0 for p in health["partitions"].values()), health
        assert self.alive()
        return health


def bucket_app(*args: str, settings: Path, timeout_s: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``bucket-app`` command line with ``settings`` (and ``env``) only, as a user
    would; never raises for its exit status."""
    # only the settings file configures the CLI, as in Worker.start
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUCKET_APP_") and k != "PORT"}
    return subprocess.run(
        [sys.executable, "-m", "bucket_app.cli", *args, "--settings", str(settings)],
        capture_output=True, text=True, timeout=timeout_s, env={**clean, **(env or {})},
        cwd=REPO, check=False)


def _section_of(name: str) -> str:
    from bucket_app.settings import KEYS

    for key in KEYS:
        if key.name == name:
            return key.section
    raise KeyError(name)


class NotLoaded(AssertionError):
    """The worker answered 503: its snapshot is not loaded yet (at once, without wait_ms)."""


def counts_of(worker: Worker, prefix: str = "") -> dict[tuple, int]:
    """The worker's counts (``/a/default``) by (server, topic, bucket start); no key twice.
    Raises :class:`NotLoaded` on a 503 (a worker still loading its snapshot)."""
    answer = worker.get("/a/default")
    if answer.status == 503:
        raise NotLoaded(answer.json())
    assert answer.status == 200, (answer.status, answer.json())
    rows = answer.json()
    found: dict[tuple, int] = {}
    for row in rows:
        if not (row["server_name"] or "").startswith(prefix):
            continue
        key = (row["server_name"], row["topic"], row["bucket_start"])
        assert key not in found, f"duplicate row {key}"
        found[key] = row["count"]
    return found
