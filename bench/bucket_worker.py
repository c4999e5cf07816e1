"""bucket_app workers: ``python -m faust -A bucket_app worker`` with generated settings.

The same way tests/integration/conftest.py starts them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BUCKET_S, free_port, http_json

MSG_MAP = {"origin_server": "server_name", "topic": "topic"}
SQLITE_SCHEMA = {"server_name": "TEXT", "topic": "TEXT", "bucket_start": "INTEGER",
                 "bucket_end": "INTEGER", "count": "INTEGER"}


@dataclass
class BucketWorker:
    directory: Path
    brokers: str
    topic: str
    app_id: str
    partitions: int
    bucket_type: str = "epoch"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_settings(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "msg_map_schema.json").write_text(json.dumps(MSG_MAP))
        (self.directory / "sqlite_schema.json").write_text(json.dumps(SQLITE_SCHEMA))
        path = self.directory / "settings.ini"
        path.write_text(f"""[KafkaSettings]
brokers = {self.brokers}
topic = {self.topic}
avro_val_schema = None
partitions = {self.partitions}
app_id = {self.app_id}

[MsgSettings]
bucket_interval = {BUCKET_S}
bucket_field = timestamp
bucket_type = {self.bucket_type}
msg_map_schema = msg_map_schema.json

[HTTPEndpointSetting]
sqlite_schema = sqlite_schema.json
sqlite_db = snapshot.sqlite3
sqlite_table = default
clean_interval = 7d
clean_freq = 10m
web_port = {self.port}
sql_row_limit = 1000000
data_dir = data
""")
        return path

    def start(self) -> BucketWorker:
        settings = self.write_settings()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKET_APP_")}
        env.pop("PORT", None)  # $PORT would override web_port
        env.update(BUCKET_APP_SETTINGS=str(settings), TZ="UTC", PYTHONUNBUFFERED="1")
        log = (self.directory / "worker.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "bucket_app", "worker", "-l", "warn",
             "--web-port", str(self.port), "--web-host", "127.0.0.1"],
            cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        """``/health``, or None while the web server does not answer yet."""
        try:
            answer: dict[str, Any] = http_json(self.url + "/health", timeout=5)
            return answer
        except OSError:
            return None

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 30) -> str:
        try:
            text = (self.directory / "worker.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
