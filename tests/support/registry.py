"""The schema registry for tests: the Apicurio Registry of ``make schema-registry``, and more
instances of it started through ``scripts/schema-registry.sh`` (another port, basic auth, a
file database that survives a restart). Registration and Confluent framing are done here with
urllib and fastavro, independently of bucket_app's own client.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_writer

from tests.support import REPO

#: the Confluent-compatible API of `make schema-registry`
REGISTRY_URL = os.environ.get("BUCKET_APP_TEST_REGISTRY",
                              "http://127.0.0.1:8081/apis/ccompat/v7")
CCOMPAT = "/apis/ccompat/v7"
SCRIPT = REPO / "scripts" / "schema-registry.sh"
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def registry_error(url: str = REGISTRY_URL) -> str | None:
    """Why the registry at ``url`` does not answer, or None."""
    try:
        with urllib.request.urlopen(url + "/subjects", timeout=3):  # noqa: S310 - test URL
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code == 401 else f"HTTP {exc.code}"
    except OSError as exc:
        return str(exc)


def register(subject: str, schema: dict[str, Any], url: str = REGISTRY_URL,
             auth: tuple[str, str] | None = None) -> int:
    """Register an Avro ``schema`` under ``subject``; its id."""
    headers = {"Content-Type": _CONTENT_TYPE}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - test URL
        f"{url}/subjects/{subject}/versions", method="POST", headers=headers,
        data=json.dumps({"schema": json.dumps(schema)}).encode())
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return int(json.loads(answer.read())["id"])


def avro_frame(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """``record`` as Confluent's Avro serializer writes it: byte 0, the id, the datum."""
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema, named_schemas={}), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


@dataclass
class RegistryProcess:
    """One more Apicurio instance, started and stopped by ``scripts/schema-registry.sh``."""

    port: int
    data_dir: Path | None = None  # a file database kept across restarts; None = in memory
    basic_auth: tuple[str, str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT}"

    def _run(self, command: str) -> None:
        env = {**os.environ, "REGISTRY_PORT": str(self.port)}
        if self.data_dir is not None:
            env["REGISTRY_DATA_DIR"] = str(self.data_dir)
        if self.basic_auth is not None:
            env["REGISTRY_BASIC_USER"], env["REGISTRY_BASIC_PASSWORD"] = self.basic_auth
        subprocess.run([str(SCRIPT), command], env=env, check=True, capture_output=True,
                       timeout=180)

    def start(self) -> RegistryProcess:
        self._run("start")
        return self

    def stop(self) -> None:
        self._run("stop")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the registry's JVM (SIGSTOP: it hangs, connections accepted by
        the kernel but never answered; SIGCONT: it goes on)."""
        pid = int((REPO / ".registry" / f"registry-{self.port}.pid").read_text().strip())
        os.kill(pid, signum)
