"""Web views: the seed's routes (/a, /c, /r, /rst), the JSON API (/api/v1) and /health.

Views read only the SQLite snapshot (through the read-only :mod:`bucket_app.sql` sandbox, run
in child processes by :mod:`bucket_app.sqlproc`) and the snapshot reader's in-memory state;
they never touch the Faust table, so they cannot trip Faust's "outside of stream iteration"
checks or block the agent. Every error is an :class:`~bucket_app.errors.HttpError` rendered as
JSON in one place (:func:`error_middleware`), which also turns aiohttp's own 404/405 and any
unexpected exception into the same shape, so a client never sees an HTML page or a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import faust
import orjson
from aiohttp import web as aioweb

from bucket_app.buckets import parse_epoch, parse_iso
from bucket_app.errors import BadInput, HttpError
from bucket_app.settings import RST_COLUMN, Settings
from bucket_app.snapshot import SnapshotReader
from bucket_app.sql import json_default, quote_identifier
from bucket_app.sqlproc import EncodedResult, SqlPool

log = logging.getLogger(__name__)

API = "/api/v1"
JSON_TYPE = "application/json"
# child processes running user SQL, and as many threads waiting on them
SQL_PROCESSES = 2
# how often a request waiting for min_offsets looks at the snapshot reader's position
WAIT_POLL_S = 0.02
DEFAULT_WAIT_MS = 2_000
MAX_WAIT_MS = 30_000
MIN_OFFSETS_HEADER = "X-Min-Offsets"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                  ) -> aioweb.Response:
    return aioweb.Response(
        body=orjson.dumps(body, default=json_default), status=status,
        content_type=JSON_TYPE, headers=headers,
    )


def error_response(exc: HttpError) -> aioweb.Response:
    headers = {"Retry-After": str(exc.context["retry_after_s"])} if (
        "retry_after_s" in exc.context) else None
    return json_response(exc.as_json(), status=exc.status, headers=headers)


@aioweb.middleware
async def error_middleware(
    request: aioweb.Request, handler: Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]],
) -> aioweb.StreamResponse:
    """One JSON error shape for our errors, aiohttp's own errors and anything unexpected."""
    try:
        return await handler(request)
    except HttpError as exc:
        return error_response(exc)
    except aioweb.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "no such route", 405: "method not allowed"}.get(exc.status, exc.reason)
        return error_response(HttpError(exc.status, message, path=request.path))
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(HttpError(500, "internal error; see the worker log"))


def parse_time_param(name: str, raw: str) -> float:
    """A query-string time: epoch seconds or ISO-8601."""
    try:
        return parse_epoch(raw)
    except BadInput:
        pass
    try:
        return parse_iso(raw)
    except BadInput:
        raise HttpError(400, f"{name} must be epoch seconds or ISO-8601", value=raw) from None


def parse_limit(raw: str | None, ceiling: int) -> int:
    if raw is None:
        return ceiling
    try:
        limit = int(raw)
    except ValueError:
        raise HttpError(400, "limit must be a whole number", value=raw) from None
    if limit <= 0:
        raise HttpError(400, "limit must be greater than 0", value=raw)
    return min(limit, ceiling)


def encode_token(position: Mapping[int, int]) -> str:
    """An opaque position token: the reflected offset of every partition, in order."""
    offsets = [position[p] for p in sorted(position)]
    return base64.urlsafe_b64encode(orjson.dumps(offsets)).rstrip(b"=").decode()


def parse_min_offsets(raw: str, partitions: int) -> dict[int, int]:
    """``p:offset,p:offset`` or a token from an earlier answer -> {partition: offset}."""
    text = raw.strip()
    try:
        if ":" in text:
            wanted = {}
            for part in text.split(","):
                partition, offset = part.split(":")
                wanted[int(partition)] = int(offset)
        else:
            padded = text + "=" * (-len(text) % 4)
            offsets = orjson.loads(base64.urlsafe_b64decode(padded))
            if not isinstance(offsets, list) or not all(isinstance(o, int) for o in offsets):
                raise ValueError("not a token")
            wanted = dict(enumerate(offsets))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise HttpError(400, "min_offsets must be p:offset[,p:offset...] or a token "
                        "from an earlier answer", value=raw[:200]) from exc
    bad = [p for p in wanted if not 0 <= p < partitions]
    if bad:
        raise HttpError(400, f"no partition {bad[0]}; the topic has {partitions}", value=raw)
    return wanted


def parse_wait_ms(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_WAIT_MS
    try:
        wait_ms = int(raw)
    except ValueError:
        raise HttpError(400, "wait_ms must be a whole number of milliseconds", value=raw) from None
    if not 0 <= wait_ms <= MAX_WAIT_MS:
        raise HttpError(400, f"wait_ms must be between 0 and {MAX_WAIT_MS}", value=raw)
    return wait_ms


class Service:
    """What the views need: settings, the snapshot reader, the agent's counters, a SQL pool."""

    def __init__(self, settings: Settings, reader: SnapshotReader, processor: Any) -> None:
        self.settings = settings
        self.reader = reader
        self.processor = processor
        self.threads = ThreadPoolExecutor(SQL_PROCESSES, thread_name_prefix="bucket_app-sql")
        self.sql = SqlPool(
            SQL_PROCESSES, str(settings.snapshot_path), settings.sqlite_table,
            row_limit=settings.sql_row_limit,
            time_limit_ms=int(settings.sql_time_limit_s * 1000),
        )

    async def query(self, request: Any, sql: str, params: Any = None, *,
                    query_params: bool = True, row_limit: int | None = None) -> EncodedResult:
        """Run ``sql`` once the snapshot is ready and as fresh as the request asks.

        A request may name a position (``min_offsets`` query parameter, or the X-Min-Offsets
        header on any route): the answer waits up to ``wait_ms`` for the snapshot to reflect it,
        then gives up with 503 and Retry-After rather than answer from older data.
        """
        state = self.reader.state
        args = request.query if query_params else {}
        raw = args.get("min_offsets") or request.headers.get(MIN_OFFSETS_HEADER)
        wait_ms = parse_wait_ms(args.get("wait_ms") or request.headers.get("X-Wait-Ms"))
        wanted = parse_min_offsets(raw, self.reader.partitions) if raw else {}
        deadline = time.monotonic() + wait_ms / 1000
        while not (state.reached(wanted) if wanted else state.caught_up or state.generation):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not wanted:
                    raise HttpError(503, "snapshot not ready yet", retry_after_s=1)
                raise HttpError(
                    503, "the snapshot has not reached the requested offsets yet",
                    retry_after_s=1, wanted={str(p): o for p, o in wanted.items()},
                    position={str(p): o for p, o in state.position().items()},
                )
            # The web server runs in its own thread and event loop: poll the reader's state.
            await asyncio.sleep(min(WAIT_POLL_S, remaining))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.threads, self.sql.execute, sql, params, row_limit)

    def status(self) -> dict[str, Any]:
        state = self.reader.state
        counter = self.processor.counter
        return {
            "rst_id": state.generation,
            "snapshot_age_s": round(time.time() - state.refreshed_at_s, 3)
            if state.refreshed_at_s else None,
            "caught_up": state.caught_up,
            "complete": state.complete,
            "token": encode_token(state.position()),
            "partitions": {
                str(p): {
                    "offset": state.offset(p),
                    "watermark": state.progress[p].watermark_s if p in state.progress else None,
                    "lag": state.lag(p),
                }
                for p in range(state.partitions)
            },
            "worker": {
                **self.processor.assignment,
                "batches": counter.batches,
                "counted": counter.counted,
                "replayed": counter.replayed,
                "skipped": dict(counter.skipped),
            },
        }

    def headers(self, result: EncodedResult | None = None) -> dict[str, str]:
        state = self.reader.state
        headers = {
            "X-RST-ID": str(state.generation),
            "X-Snapshot-Caught-Up": "true" if state.caught_up else "false",
            "X-Complete": "true" if state.complete else "false",
            "X-Position-Token": encode_token(state.position()),
        }
        if result is not None:
            headers["X-Truncated"] = "true" if result.truncated else "false"
        return headers


def register(app: faust.App, settings: Settings, reader: SnapshotReader, processor: Any) -> None:
    """Add the views and the error middleware to the Faust app's web server."""
    service = Service(settings, reader, processor)
    app.web.web_app.middlewares.append(error_middleware)  # type: ignore[attr-defined]
    table = settings.sqlite_table
    all_rows_sql = f"SELECT * FROM {quote_identifier(table)}"

    @app.task
    async def start_sql_processes() -> None:
        # Started with the worker, so the first query does not wait for a Python to start.
        await asyncio.to_thread(service.sql.start)

    @app.page("/a/{table}")
    class AllRows(faust.web.View):
        """GET /a/<table>: every row of the snapshot table (seed route)."""

        async def get(self, request: Any, table: str) -> aioweb.Response:
            if table != settings.sqlite_table:
                raise HttpError(
                    404, f"no table {table!r}; this service has {settings.sqlite_table!r}")
            result = await service.query(request, all_rows_sql)
            return json_response(result.rows, headers=service.headers(result))

    @app.page("/c/{sql:.*}")
    class Custom(faust.web.View):
        """GET /c/<sql>: the rest of the URL, decoded, as one read-only SQL statement (seed)."""

        async def get(self, request: Any, sql: str) -> aioweb.Response:
            # The raw path keeps a '?' or '%' that belongs to the SQL; match_info would not.
            raw = request.raw_path.split("/c/", 1)[1] if "/c/" in request.raw_path else sql
            result = await service.query(request, unquote(raw), query_params=False)
            return json_response(result.rows, headers=service.headers(result))

    @app.page("/r")
    class Reset(faust.web.View):
        """GET /r: refresh the snapshot now. Counts live in the table, so nothing is lost."""

        async def get(self, request: Any) -> aioweb.Response:
            reader.request_refresh()
            return json_response(None, headers=service.headers())

    @app.page("/rst")
    class RstId(faust.web.View):
        """GET /rst: the snapshot generation (the seed's RST_ID)."""

        async def get(self, request: Any) -> aioweb.Response:
            return json_response(reader.state.generation, headers=service.headers())

    @app.page("/health")
    class Health(faust.web.View):
        async def get(self, request: Any) -> aioweb.Response:
            return json_response({"status": "ok"} | service.status())

    @app.page(f"{API}/buckets")
    class Buckets(faust.web.View):
        """GET /api/v1/buckets?<column>=v&from=t&to=t&limit=n: filtered counts, with status."""

        async def get(self, request: Any) -> aioweb.Response:
            where: list[str] = []
            params: list[Any] = []
            limit = parse_limit(request.query.get("limit"), settings.sql_row_limit)
            for name, value in request.query.items():
                if name in ("limit", "min_offsets", "wait_ms"):
                    continue
                if name == "from":
                    where.append("bucket_end > ?")
                    params.append(parse_time_param(name, value))
                elif name == "to":
                    where.append("bucket_start < ?")
                    params.append(parse_time_param(name, value))
                elif name in settings.sqlite_schema or name == RST_COLUMN:
                    where.append(f"{quote_identifier(name)} IS ?" if value == "" else
                                 f"{quote_identifier(name)} = ?")
                    params.append(None if value == "" else value)
                else:
                    raise HttpError(400, f"unknown filter {name!r}", filters=[
                        "from", "to", "limit", "min_offsets", "wait_ms", *settings.sqlite_schema])
            sql = all_rows_sql + (" WHERE " + " AND ".join(where) if where else "")
            sql += " ORDER BY bucket_start, rowid LIMIT ?"
            params.append(limit + 1)
            result = await service.query(request, sql, params, row_limit=limit)
            return json_response(
                {"rows": result.rows, "truncated": result.truncated} | service.status(),
                headers=service.headers(result),
            )

    @app.page(f"{API}/sql")
    class Sql(faust.web.View):
        """GET ?q=... or POST {"sql": ..., "params": [...] | {...}}: read-only SQL, enveloped."""

        async def get(self, request: Any) -> aioweb.Response:
            sql = request.query.get("q") or request.query.get("sql")
            if not sql:
                raise HttpError(400, "missing query parameter q")
            return await self._answer(request, sql, None)

        async def post(self, request: Any) -> aioweb.Response:
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                raise HttpError(400, f"body is not JSON: {exc}") from None
            if not isinstance(body, dict):
                raise HttpError(400, "body must be a JSON object with sql and optional params")
            sql = body.get("sql") or body.get("q")
            params = body.get("params")
            if not isinstance(sql, str) or not sql.strip():
                raise HttpError(400, "body needs a non-empty string 'sql'")
            if params is not None and not isinstance(params, list | dict):
                raise HttpError(400, "params must be a JSON array or object")
            return await self._answer(request, sql, params)

        async def _answer(self, request: Any, sql: str, params: Any) -> aioweb.Response:
            result = await service.query(request, sql, params)
            body = {
                "columns": result.columns, "rows": result.rows, "truncated": result.truncated,
                "elapsed_ms": round(result.elapsed_ms, 3),
            } | service.status()
            return json_response(body, headers=service.headers(result))

    del AllRows, Custom, Reset, RstId, Health, Buckets, Sql
