"""The schema registry client (bucket_app.kafka.registry) against a real HTTP server on
loopback that answers as a registry would (200, 404, 401, 5xx, slowly, not at all): how each
answer maps to a writer schema or to our exceptions, basic auth, the background fetch and its
backoff, and the reader schema's checks. No broker, no registry process."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bucket_app.counting.decode import AVRO, UNKNOWN
from bucket_app.errors import RegistryError, RegistryRefused, RegistryUnavailable, SettingsError
from bucket_app.kafka.registry import (
    RegistryClient,
    WriterSchemas,
    reader_schema,
    wait_for_reader,
)
from bucket_app.settings import Settings, load
from tests.support.evolution import V1, V4

PREFIX = "/apis/ccompat/v7"


class Registry(ThreadingHTTPServer):
    """Answers ``routes[path] = (status, body, delay_s)``; 404 for any other path."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, tuple[int, Any, float]] = {}
        self.auth: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{PREFIX}"


class Handler(BaseHTTPRequestHandler):
    server: Registry

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.auth.append(self.headers.get("Authorization"))
        status, body, delay_s = self.server.routes.get(
            self.path.removeprefix(PREFIX),
            (404, {"error_code": 40403, "message": "Schema not found"}, 0.0))
        time.sleep(delay_s)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = Registry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def settings_for(tmp_path: Path, url: str, user: str | None = None, avsc: bool = False,
                 msg_map: dict[str, str] | None = None) -> Settings:
    (tmp_path / "map.json").write_text(json.dumps(msg_map or {"service_name": "service"}))
    (tmp_path / "schema.json").write_text(json.dumps({
        **{column: "TEXT" for column in (msg_map or {"service_name": "service"}).values()},
        "bucket_start": "INTEGER", "bucket_end": "INTEGER", "count": "INTEGER"}))
    (tmp_path / "v4.avsc").write_text(json.dumps(V4))
    lines = ["[KafkaSettings]", "brokers = 127.0.0.1:9092", "topic = events",
             f"schema_registry_url = {url}"]
    if user:
        lines.append(f"schema_registry_username = {user}")
    if avsc:
        lines.append("avro_val_schema = v4.avsc")
    lines += ["[MsgSettings]", "bucket_interval = 20", "bucket_field = ts",
              "bucket_type = epoch", "msg_map_schema = map.json", "[HTTPEndpointSetting]",
              "sqlite_schema = schema.json", "sqlite_db = :memory:", "sqlite_table = t",
              "clean_interval = 7d", "clean_freq = 10m"]
    (tmp_path / "settings.ini").write_text("\n".join(lines) + "\n")
    environ = {"BUCKET_APP_SCHEMA_REGISTRY_PASSWORD": "s3cret"} if user else {}
    return load(tmp_path / "settings.ini", environ)


def test_answers_map_to_writer_schemas_and_exceptions(tmp_path, registry):
    registry.routes["/schemas/ids/1"] = (200, {"schema": json.dumps(V1)}, 0)
    registry.routes["/schemas/ids/3"] = (503, {"message": "down for maintenance"}, 0)
    registry.routes["/schemas/ids/4"] = (200, b"<html>proxy</html>", 0)
    registry.routes["/schemas/ids/5"] = (400, {"message": "bad request"}, 0)
    client = RegistryClient(settings_for(tmp_path, registry.url))
    assert client.schema(1).kind == AVRO
    assert client.schema(2).kind == UNKNOWN
    with pytest.raises(RegistryUnavailable, match="HTTP 503.*down for maintenance"):
        client.schema(3)
    with pytest.raises(RegistryError, match="other than JSON"):
        client.schema(4)
    with pytest.raises(RegistryError, match="HTTP 400") as caught:
        client.schema(5)
    assert not isinstance(caught.value, RegistryUnavailable)


def test_an_unreachable_registry_is_unavailable(tmp_path, registry):
    url = registry.url
    registry.shutdown()
    registry.server_close()  # nothing listens there now
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        RegistryClient(settings_for(tmp_path, url)).schema(1)


def test_basic_auth_is_sent_and_a_refusal_names_the_password_key(tmp_path, registry):
    registry.routes["/schemas/ids/1"] = (200, {"schema": json.dumps(V1)}, 0)
    registry.routes["/subjects"] = (401, {"message": "Unauthorized"}, 0)
    client = RegistryClient(settings_for(tmp_path, registry.url, user="KEY"))
    client.schema(1)
    assert registry.auth[-1] == "Basic " + base64.b64encode(b"KEY:s3cret").decode()
    with pytest.raises(RegistryRefused) as caught:
        client.check_access()
    message = str(caught.value)
    assert "schema_registry_password" in message and "'KEY'" in message
    assert "s3cret" not in message and "\n" not in message


def test_fetch_waits_a_little_then_goes_on_in_the_background(tmp_path, registry):
    registry.routes["/schemas/ids/1"] = (200, {"schema": json.dumps(V1)}, 0.5)
    schemas = WriterSchemas(RegistryClient(settings_for(tmp_path, registry.url)))

    async def run() -> tuple[bool, bool, bool]:
        quick = await schemas.fetch({1}, 0.05)
        in_flight = schemas.fetching()
        await asyncio.sleep(0.7)
        return quick, in_flight, await schemas.fetch({1}, 0)

    assert asyncio.run(run()) == (False, True, True)
    assert schemas[1].kind == AVRO and schemas.outage is None


def test_an_outage_backs_off_then_recovers(tmp_path, registry):
    registry.routes["/schemas/ids/1"] = (500, {"message": "boom"}, 0)
    schemas = WriterSchemas(RegistryClient(settings_for(tmp_path, registry.url)))

    async def run() -> list[Any]:
        seen: list[Any] = [await schemas.fetch({1}, 1.0), schemas.outage, schemas.retry_due()]
        asked = len(registry.auth)
        seen.append(await schemas.fetch({1}, 1.0))  # within the backoff: not asked again
        seen.append(len(registry.auth) == asked)
        registry.routes["/schemas/ids/1"] = (200, {"schema": json.dumps(V1)}, 0)
        await asyncio.sleep(0.6)  # the first backoff is 0.5 s
        seen.append(await schemas.fetch({1}, 1.0))
        return seen

    first, outage, due, again, not_asked, recovered = asyncio.run(run())
    assert (first, due, again, not_asked, recovered) == (False, False, False, True, True)
    assert "HTTP 500" in outage and schemas.outage is None


def test_the_reader_is_the_subjects_latest_version_with_the_mapped_fields(tmp_path, registry):
    registry.routes["/subjects/events-value/versions/latest"] = (
        200, {"id": 7, "version": 4, "schema": json.dumps(V4)}, 0)
    settings = settings_for(tmp_path, registry.url)
    reader = reader_schema(settings, RegistryClient(settings))
    assert (reader.subject, reader.version, reader.schema_id) == ("events-value", 4, 7)
    assert "subject events-value version 4 (id 7)" in reader.describe()
    # a mapped field the reader lacks stops start-up, naming the field and the subject
    (tmp_path / "old-map").mkdir()
    other = settings_for(tmp_path / "old-map", registry.url, msg_map={"service": "service"})
    with pytest.raises(SettingsError, match=r"field 'service' is not in the reader schema, "
                                            r"subject events-value \(version 4, id 7\)"):
        reader_schema(other, RegistryClient(other))


def test_no_subject_and_no_file_stops_start_up(tmp_path, registry):
    settings = settings_for(tmp_path, registry.url)
    with pytest.raises(SettingsError, match="has no subject events-value"):
        reader_schema(settings, RegistryClient(settings))


def test_with_a_file_an_unreachable_registry_does_not_hold_up_start_up(tmp_path, registry):
    url = registry.url
    registry.shutdown()
    registry.server_close()
    settings = settings_for(tmp_path, url, avsc=True)
    started = time.monotonic()
    reader = wait_for_reader(settings, RegistryClient(settings))
    assert reader.schema is settings.avro_schema and reader.subject is None
    assert time.monotonic() - started < 2
