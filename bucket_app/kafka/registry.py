"""The schema registry: the reader schema at start-up, writer schemas by id while counting.

:class:`RegistryClient` speaks the Confluent schema registry API (Confluent Platform and Cloud,
Apicurio's ``/apis/ccompat/v7``, Redpanda, Karapace): ``GET /schemas/ids/<id>``,
``GET /subjects/<subject>/versions/<version>``, ``POST /subjects/<subject>/versions``, with
basic auth and a CA file. It is synchronous (urllib), so start-up (which runs before Faust's
event loop exists) and ``bucket-app produce`` call it directly, and the worker calls it in a
thread, never on its event loop. Every failure is one of three exceptions: the registry
refused us (:class:`~bucket_app.errors.RegistryRefused`, naming the key to fix: start-up stops),
is unavailable (:class:`~bucket_app.errors.RegistryUnavailable`: the worker waits and retries),
or answered something we cannot use (:class:`~bucket_app.errors.RegistryError`).

:class:`WriterSchemas` is the worker's cache of writer schemas, handed to
:class:`~bucket_app.counting.decode.RegistryDecoder`. An id is fetched once: its schema never
changes (registries assign a new id to every new schema), and an id the registry does not know
is cached as unknown too, so its records are skipped as ``unknown_schema`` without asking again.
While the registry is unavailable nothing is cached for the ids asked, and the intake holds
back the partitions whose records need them (:mod:`bucket_app.kafka.intake`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from bucket_app.counting.decode import (
    AVRO,
    JSON,
    UNKNOWN,
    WriterSchema,
    framed_ids,
    missing_field,
    writer_schema,
)
from bucket_app.errors import (
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
    SettingsError,
)
from bucket_app.kafka.security import key_ref
from bucket_app.settings import Settings

log = logging.getLogger(__name__)

#: One HTTP request's time limit: a registry slower than this counts as unavailable.
REQUEST_TIMEOUT_S: Final = 5.0
#: How long a batch waits for its new schema ids before its partition is held (sought back and
#: paused) and the request goes on in the background.
FETCH_WAIT_S: Final = 1.0
#: Waits between attempts while the registry is unavailable: doubling from the first to the last.
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 5.0
_CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"


def value_subject(topic: str) -> str:
    """The subject of a topic's value schemas under Confluent's default naming strategy."""
    return f"{topic}-value"


@dataclass(frozen=True)
class Registered:
    """One version of a subject: its schema id, version number, type and text."""

    schema_id: int
    version: int
    schema_type: str
    text: str


class RegistryClient:
    """A synchronous client of a Confluent-compatible schema registry."""

    def __init__(self, settings: Settings, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        if settings.schema_registry_url is None:
            raise ValueError("no schema_registry_url")
        self.settings = settings
        self.url = settings.schema_registry_url
        self.timeout_s = timeout_s
        self._headers = {"Accept": _CONTENT_TYPE}
        if settings.schema_registry_username is not None:
            pair = f"{settings.schema_registry_username}:{settings.schema_registry_password}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._context: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            cafile = settings.schema_registry_cafile
            try:
                self._context = ssl.create_default_context(
                    cafile=None if cafile is None else str(cafile))
            except (OSError, ssl.SSLError) as exc:
                raise SettingsError(f"{key_ref(settings, 'schema_registry_cafile')}: cannot "
                                    f"load {cafile} as PEM CA certificates: {exc}") from None

    # ---- the API ------------------------------------------------------------------------

    def schema(self, schema_id: int) -> WriterSchema:
        """The schema under ``schema_id`` as decoding needs it (``unknown`` on a 404)."""
        answer = self._call("GET", f"/schemas/ids/{schema_id}")
        if answer is None:
            return WriterSchema(schema_id, UNKNOWN)
        text = answer.get("schema") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise RegistryError(f"schema registry {self.url}: schema {schema_id} came "
                                f"without its text: {str(answer)[:80]}")
        return writer_schema(schema_id, answer.get("schemaType"), text)

    def version(self, subject: str, version: int | str = "latest") -> Registered | None:
        """A version of ``subject`` (default the latest); None when there is none."""
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions/{version}"
        answer = self._call("GET", path)
        if answer is None:
            return None
        try:
            return Registered(int(answer["id"]), int(answer["version"]),
                              str(answer.get("schemaType") or "AVRO").upper(),
                              str(answer["schema"]))
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"schema registry {self.url}: {path} answered "
                                f"{str(answer)[:80]}") from None

    def register(self, subject: str, text: str, schema_type: str = "AVRO") -> int:
        """Register ``text`` under ``subject`` (the id it already has when it is there)."""
        body: dict[str, Any] = {"schema": text}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        answer = self._call("POST", path, body)
        try:
            return int(answer["id"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"schema registry {self.url}: registering under {subject} "
                                f"answered {str(answer)[:80]}") from None

    def check_access(self) -> None:
        """One authenticated request: raises RegistryRefused on bad credentials or CA."""
        self._call("GET", "/subjects")

    # ---- HTTP ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer; None on a 404. Raises RegistryRefused, RegistryUnavailable or
        RegistryError."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = _CONTENT_TYPE
        request = urllib.request.Request(  # noqa: S310 - http(s) only (settings check it)
            self.url + path, data=data, headers=headers, method=method)
        where = f"schema registry {self.url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s,  # noqa: S310
                                        context=self._context) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc)
            if exc.code in (401, 403):
                raise RegistryRefused(self._refusal(exc.code, detail)) from None
            if exc.code == 404:
                return None
            if exc.code >= 500 or exc.code == 429:
                raise RegistryUnavailable(f"{where} answered HTTP {exc.code} to {method} "
                                          f"{path}: {detail}") from None
            raise RegistryError(f"{where} answered HTTP {exc.code} to {method} {path}: "
                                f"{detail}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise RegistryRefused(
                    f"{key_ref(self.settings, 'schema_registry_cafile')}: the certificate of "
                    f"{where} is not trusted: {reason.verify_message or reason}") from None
            raise RegistryUnavailable(f"{where} is unreachable: {reason}") from None
        except (OSError, TimeoutError) as exc:  # a timeout or reset while reading
            raise RegistryUnavailable(f"{where} is unreachable: {type(exc).__name__}: "
                                      f"{exc}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise RegistryError(f"{where} answered {method} {path} with something other "
                                f"than JSON: {raw[:80]!r}") from None

    def _refusal(self, code: int, detail: str) -> str:
        user = self.settings.schema_registry_username
        if user is None:
            return (f"{key_ref(self.settings, 'schema_registry_password')}: the schema registry "
                    f"{self.url} wants credentials (HTTP {code}); set schema_registry_username "
                    "and schema_registry_password")
        return (f"{key_ref(self.settings, 'schema_registry_password')}: the schema registry "
                f"{self.url} refused user {user!r} (HTTP {code}: wrong password or unknown "
                f"user): {detail}")


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The registry's error message (Confluent: ``{"error_code", "message"}``), one line."""
    try:
        body = exc.read()[:400].decode("utf-8", "replace")
    except OSError:
        body = ""
    try:
        found = json.loads(body)
        if isinstance(found, dict) and "message" in found:
            body = str(found["message"])
    except ValueError:
        pass
    return " ".join(body.split())[:160] or str(exc.reason)


# ---- start-up -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """The reader schema the worker decodes with: from the avsc file, or the registry's latest
    version of the topic's value subject (``subject``, ``version``, ``schema_id`` set)."""

    schema: dict[str, Any] | None  # None: values are JSON
    subject: str | None = None
    version: int | None = None
    schema_id: int | None = None

    def describe(self) -> str:
        if self.subject is None:
            return "reader schema: the avro_val_schema file" if self.schema else "values: JSON"
        kind = "Avro" if self.schema is not None else "JSON Schema (values read as JSON)"
        return (f"reader schema: {kind}, subject {self.subject} version {self.version} "
                f"(id {self.schema_id}), latest at start-up")


def reader_schema(settings: Settings, client: RegistryClient) -> Reader:
    """The reader schema for ``settings`` with a registry, checked against the mapped fields
    and the time field. Raises SettingsError (one line naming the field and the subject),
    RegistryRefused, or RegistryUnavailable (the caller decides whether to wait)."""
    subject = value_subject(settings.topic)
    if settings.avro_schema is not None:
        client.check_access()
        reader = Reader(settings.avro_schema)
        origin = f"the avro_val_schema file {settings.avro_schema_path}"
    else:
        found = client.version(subject)
        if found is None:
            raise SettingsError(
                f"{key_ref(settings, 'schema_registry_url')}: the schema registry "
                f"{client.url} has no subject {subject}, so there is no reader schema: "
                "register the topic's value schema there, or set avro_val_schema")
        decoded = writer_schema(found.schema_id, found.schema_type, found.text)
        if decoded.kind == JSON:
            return Reader(None, subject, found.version, found.schema_id)
        if decoded.kind != AVRO or decoded.schema is None:
            raise SettingsError(f"{key_ref(settings, 'schema_registry_url')}: the latest "
                                f"version of subject {subject} cannot be the reader schema: "
                                f"{decoded.why}")
        reader = Reader(decoded.schema, subject, found.version, found.schema_id)
        origin = f"subject {subject} (version {found.version}, id {found.schema_id})"
    assert reader.schema is not None
    for path, name in [*((p, "msg_map_schema") for p in settings.msg_map),
                       (settings.bucket_field, "bucket_field")]:
        if missing_field(reader.schema, path):
            raise SettingsError(f"{name}: field {path!r} is not in the reader schema, "
                                f"{origin}")
    return reader


def wait_for_reader(settings: Settings, client: RegistryClient) -> Reader:
    """:func:`reader_schema`, waiting while the registry is unavailable (up to
    ``startup_timeout``, else for ever, saying so every few seconds); with an avro_val_schema
    file, which needs no registry, not waiting (the credentials are then checked by the first
    request that gets an answer)."""
    deadline = (None if settings.startup_timeout_s is None
                else time.monotonic() + settings.startup_timeout_s)
    delay = BACKOFF_FIRST_S
    said = 0.0
    while True:
        try:
            return reader_schema(settings, client)
        except RegistryUnavailable as exc:
            if settings.avro_schema is not None:
                # the reader is the file: count what needs no registry, hold what does
                log.warning("the schema registry is unavailable at start-up (%s); values "
                            "framed with a schema id wait for it", exc)
                return Reader(settings.avro_schema)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise RegistryUnavailable(f"{exc}; gave up after startup_timeout "
                                          f"({settings.startup_timeout_s:g} s)") from None
            if now - said >= 5:
                log.warning("waiting for the schema registry: %s", exc)
                said = now
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


# ---- while counting -------------------------------------------------------------------------


class WriterSchemas(dict[int, WriterSchema]):
    """Writer schemas by id, fetched from the registry once each (the decoder reads this dict).

    Requests run in a background task (one at a time, each in a thread), so a registry that
    hangs holds up only the partitions that need it: :meth:`fetch` waits for them at most
    ``wait_s``. ``outage`` says why the registry is unavailable, while it is; a new request is
    then made no sooner than the backoff allows (doubling from BACKOFF_FIRST_S to
    BACKOFF_MAX_S).
    """

    def __init__(self, client: RegistryClient) -> None:
        super().__init__()
        self.client = client
        self.outage: str | None = None
        self.fetched = 0  # ids asked of the registry that answered
        self._delay_s = BACKOFF_FIRST_S
        self._retry_at = 0.0
        self._task: asyncio.Future[None] | None = None

    def missing(self, values: Iterable[bytes | None]) -> set[int]:
        """The schema ids of framed ``values`` not in the cache."""
        return framed_ids(values).difference(self)

    def retry_due(self) -> bool:
        return self.outage is None or time.monotonic() >= self._retry_at

    def fetching(self) -> bool:
        return self._task is not None and not self._task.done()

    async def fetch(self, ids: Iterable[int], wait_s: float) -> bool:
        """Ask the registry for the ``ids`` not cached (unless a request is under way, or the
        backoff says not yet) and wait for it up to ``wait_s``; True when all are cached."""
        wanted = set(ids).difference(self)
        if not wanted:
            return True
        if not self.fetching() and self.retry_due():
            self._task = asyncio.ensure_future(self._fetch_all(sorted(wanted)))
        if self._task is not None and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), wait_s)
        return not wanted.difference(self)

    async def _fetch_all(self, wanted: list[int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            for schema_id in wanted:
                self._keep(await loop.run_in_executor(None, self.client.schema, schema_id))
        except RegistryError as exc:  # unavailable, or refusing us now: wait, skip nothing
            self._failed(str(exc))
            return
        if self.outage is not None:
            log.warning("the schema registry answers again; counting resumes (was: %s)",
                        self.outage)
        self.outage, self._delay_s = None, BACKOFF_FIRST_S

    def _keep(self, found: WriterSchema) -> None:
        self[found.schema_id] = found
        self.fetched += 1
        if found.kind == UNKNOWN:
            log.warning("schema id %d is not in the schema registry; its records are skipped "
                        "as unknown_schema", found.schema_id)
        elif found.kind in (AVRO, JSON):
            log.info("schema id %d: %s writer schema fetched", found.schema_id, found.kind)
        else:
            log.warning("schema id %d cannot be read: %s; its records are skipped as "
                        "avro_mismatch", found.schema_id, found.why)

    def _failed(self, why: str) -> None:
        if self.outage is None:
            log.warning("the schema registry is unavailable; partitions waiting for a schema "
                        "id pause and retry: %s", why)
        self.outage = why
        self._retry_at = time.monotonic() + self._delay_s
        self._delay_s = min(self._delay_s * 2, BACKOFF_MAX_S)
