"""Web views: the seed's routes (/a, /c, /r, /rst), the JSON API (/api/v1) and /health.

Views read only the SQLite snapshot (through the read-only :mod:`bucket_app.sql.sandbox`, run
in child processes by :mod:`bucket_app.sql.pool`) and the snapshot reader's in-memory state;
they never touch the Faust table, so they cannot trip Faust's "outside of stream iteration"
checks or block the agent. Every error is an :class:`~bucket_app.errors.HttpError` rendered as
JSON in one place (:func:`error_middleware`), which also turns aiohttp's own 404/405 and any
unexpected exception into the same shape, so a client never sees an HTML page or a traceback.
What aiohttp refuses before any middleware runs (a URL or header line over its limits, a request
line it cannot parse) gets the same shape from :class:`JsonErrorRequestHandler`.

Every route that runs SQL passes :class:`SqlAdmission`: a few queries per client address, a
bounded number in all, and the SQL child processes handed out least-used client first, so one
client's runaway queries cannot make everyone else wait. With ``http_token`` set, every route
but /health needs ``Authorization: Bearer <token>`` (:func:`auth_middleware`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import hmac
import ipaddress
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import unquote

import faust
import orjson
from aiohttp import web as aioweb
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from bucket_app import diskspace
from bucket_app.counting.buckets import parse_epoch, parse_iso
from bucket_app.errors import BadInput, HttpError
from bucket_app.kafka import brokerlog
from bucket_app.seam import web as web_seam
from bucket_app.settings import FINAL_COLUMN, RST_COLUMN, Settings
from bucket_app.snapshot.reader import SnapshotReader
from bucket_app.sql.pool import EncodedResult, SqlPool
from bucket_app.sql.sandbox import json_default, quote_identifier
from bucket_app.web import dashboard, formats, metrics, openapi, rollup, stream

log = logging.getLogger(__name__)

API = "/api/v1"
JSON_TYPE = "application/json"
# child processes running user SQL (at least sql_client_limit + 1, see Service), and as many
# threads waiting on them
SQL_PROCESSES = 2
# How fast a client's SQL time is forgiven when choosing who runs next (see SqlAdmission).
USAGE_HALF_LIFE_S = 60.0
# clients whose SQL time SqlAdmission remembers; beyond it the least-used are forgotten
USAGE_CLIENTS_KEPT = 4096
# aiohttp's parser limits. They must differ: a parser error names only the limit it hit, and
# that tells a URL too long (414) from a header too long (431). 16 KiB of URL leaves /c/ room
# for a long percent-encoded statement; 8190 is aiohttp's own header default.
MAX_URL_BYTES = 16_384
MAX_HEADER_BYTES = 8_190
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
        "retry_after_s" in exc.context) else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
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


# Open without the token: /health, and the dashboard page and its assets (web.dashboard),
# which hold no data: a browser cannot add a header to a page it navigates to.
PUBLIC_PATHS = frozenset({"/health", "/"})
PUBLIC_PREFIX = "/static/"
# EventSource cannot send headers: the stream alone also takes the token as ?access_token=.
QUERY_TOKEN_PATHS = frozenset({f"{API}/stream"})


def auth_middleware(token: str | None) -> Callable[..., Awaitable[aioweb.StreamResponse]]:
    """Every route but /health, / and /static/ needs ``Authorization: Bearer <token>`` when a
    token is set; /api/v1/stream also takes it as ``?access_token=<token>``."""
    expected = None if token is None else token.encode()

    @aioweb.middleware
    async def check_token(
        request: aioweb.Request,
        handler: Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]],
    ) -> aioweb.StreamResponse:
        path = request.path
        if expected is not None and path not in PUBLIC_PATHS and not path.startswith(
                PUBLIC_PREFIX):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if not given.strip() and path in QUERY_TOKEN_PATHS:
                scheme, given = "bearer", request.query.get("access_token", "")
            if scheme.lower() != "bearer" or not given.strip():
                raise HttpError(401, "this service needs Authorization: Bearer <token>")
            if not hmac.compare_digest(given.strip().encode(), expected):
                raise HttpError(401, "wrong token")
        return await handler(request)

    return check_token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


T = TypeVar("T")


class SqlAdmission:
    """Which SQL queries may wait, and which one runs next on a free child process.

    :meth:`admit` refuses at once what would queue too much: a client (remote address) with
    ``client_limit`` queries running or waiting gets 429, and with ``queue_limit`` admitted
    from everyone, anyone gets 503; both with Retry-After. :meth:`run` then waits for one of
    ``slots`` (the pool's children) and hands a freed one to the waiting query whose client has
    used the least SQL time lately (decaying with ``half_life_s``), not to the oldest: a query
    cut at the time limit costs its client that much, so after a flood of runaway queries from
    any number of addresses, a client sending cheap queries waits at most for one child to
    finish, never for the whole queue.

    Single-threaded by design: Faust runs the aiohttp server in its own thread with its own
    event loop (``web_in_thread=True``), and every method here is called from that loop's
    thread only (the blocking query runs in a worker thread, but it is started and awaited
    here). So the plain dicts and counters below need no lock.
    """

    def __init__(self, slots: int, client_limit: int, queue_limit: int, retry_after_s: int,
                 half_life_s: float = USAGE_HALF_LIFE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.slots = slots
        self.client_limit = client_limit
        self.queue_limit = queue_limit
        self.retry_after_s = retry_after_s
        self.half_life_s = half_life_s
        self.clock = clock
        self.free = slots
        self.total = 0
        self.per_client: dict[str, int] = {}
        # (client's recent SQL seconds, arrival, granted when the result is set)
        self.waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()
        # client -> (SQL seconds used, as of clock())
        self.usage: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def admit(self, client: str) -> Iterator[None]:
        """Hold one of the client's and one of everyone's places, or raise 429 / 503."""
        held = self.per_client.get(client, 0)
        if held >= self.client_limit:
            raise HttpError(
                429, f"too many SQL queries from {client}: {held} running or waiting, "
                f"sql_client_limit is {self.client_limit}",
                retry_after_s=self.retry_after_s, limit=self.client_limit)
        if self.total >= self.queue_limit:
            raise HttpError(
                503, f"too many SQL queries: {self.total} running or waiting, "
                f"sql_queue_limit is {self.queue_limit}",
                retry_after_s=self.retry_after_s, limit=self.queue_limit)
        self.per_client[client] = held + 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            if self.per_client[client] > 1:
                self.per_client[client] -= 1
            else:
                del self.per_client[client]

    async def run(self, client: str, job: Callable[[], Awaitable[T]]) -> T:
        """Wait for a free slot in fair order, run ``job`` on it and charge its time.

        aiohttp does not cancel a handler whose client went away (``handler_cancellation`` is
        off), so a slot is held exactly as long as its query runs in the child.
        """
        await self._acquire(client)
        started = self.clock()
        try:
            return await job()
        finally:
            self._charge(client, self.clock() - started)
            self._release()

    def used_s(self, client: str) -> float:
        """The client's SQL seconds, each halved every ``half_life_s`` since."""
        seconds, at = self.usage.get(client, (0.0, 0.0))
        return seconds * 0.5 ** ((self.clock() - at) / self.half_life_s) if seconds else 0.0

    async def _acquire(self, client: str) -> None:
        if self.free and not self.waiting:
            self.free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (self.used_s(client), next(self._arrival), granted))
        try:
            await granted
        except asyncio.CancelledError:
            # Handed a slot just as the request was cancelled: pass the slot on.
            if granted.done() and not granted.cancelled():
                self._release()
            raise

    def _release(self) -> None:
        while self.waiting:
            _, _, granted = heapq.heappop(self.waiting)
            if not granted.done():  # a cancelled waiter's future is done
                granted.set_result(None)
                return
        self.free += 1

    def _charge(self, client: str, seconds: float) -> None:
        self.usage[client] = (self.used_s(client) + seconds, self.clock())
        if len(self.usage) > USAGE_CLIENTS_KEPT:
            # Forgetting a light client costs it nothing; keep the heavy ones.
            kept = sorted(self.usage, key=self.used_s, reverse=True)[:USAGE_CLIENTS_KEPT // 2]
            self.usage = {c: self.usage[c] for c in kept}


def protocol_error(status: int, exc: BaseException | None) -> HttpError:
    """Our error for what aiohttp answers itself, before any middleware: ``status`` is what
    aiohttp chose (400 for anything its parser refuses), refined to 414 and 431 for a line
    over :data:`MAX_URL_BYTES` or
    :data:`MAX_HEADER_BYTES`."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1]
        if limit == MAX_URL_BYTES:
            return HttpError(414, f"the URL is longer than {limit} bytes", limit_bytes=limit)
        if limit == MAX_HEADER_BYTES:
            return HttpError(431, f"a request header is longer than {limit} bytes",
                             limit_bytes=limit)
    if isinstance(exc, HttpProcessingError):
        return HttpError(status, "the request could not be parsed",
                         detail=str(exc.message)[:200])
    if status >= 500:
        return HttpError(status, "internal error; see the worker log")
    return HttpError(status, HTTPStatus(status).phrase.lower())


class JsonErrorRequestHandler(aioweb.RequestHandler):
    """aiohttp's per-connection protocol, rendering its own error answers as our JSON."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> aioweb.StreamResponse:
        # aiohttp's own handling first: it logs, and refuses when a response was under way.
        super().handle_error(request, status, exc, message)
        response = error_response(protocol_error(status, exc))
        response.force_close()
        return response


class JsonErrorServer(aioweb.Server):
    """aiohttp's protocol factory, making :class:`JsonErrorRequestHandler` connections."""

    def __call__(self) -> aioweb.RequestHandler:
        handler = super().__call__()
        # Same class plus one method, no new slots, so the instance can change class.
        handler.__class__ = JsonErrorRequestHandler
        return handler


class JsonErrorAppRunner(web_seam.ServerClassRunner):
    """The worker's web runner: the app's server, with :class:`JsonErrorServer` connections
    (aiohttp builds that server in a private method: see :mod:`bucket_app.seam.web`)."""

    server_class = JsonErrorServer


def make_runner(web_app: aioweb.Application) -> aioweb.AppRunner:
    """The runner the worker serves ``web_app`` with (tests start the same one)."""
    return JsonErrorAppRunner(web_app, access_log=None, max_line_size=MAX_URL_BYTES,
                              max_field_size=MAX_HEADER_BYTES)


def use_json_error_runner(web: Any) -> None:
    """Make Faust's web driver serve with :func:`make_runner`'s runner."""
    web_seam.replace_runner(web, make_runner(web.web_app))


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
        # One child more than one client may occupy, so a client whose queries all run to the
        # time limit always leaves a child to the others.
        processes = max(SQL_PROCESSES, settings.sql_client_limit + 1)
        self.threads = ThreadPoolExecutor(processes, thread_name_prefix="bucket_app-sql")
        self.sql = SqlPool(
            processes, str(settings.snapshot_path), settings.sqlite_table,
            row_limit=settings.sql_row_limit,
            time_limit_ms=int(settings.sql_time_limit_s * 1000),
        )
        # A client refused is told to come back when its running query must have ended.
        self.admission = SqlAdmission(
            processes, settings.sql_client_limit, settings.sql_queue_limit,
            retry_after_s=max(1, math.ceil(settings.sql_time_limit_s)),
        )
        #: called with each SQL query's seconds in its process (bucket_app.web.metrics sets it)
        self.on_query: Callable[[float], None] = lambda seconds: None

    async def query(self, request: Any, sql: str, params: Any = None, *,
                    query_params: bool = True, row_limit: int | None = None) -> EncodedResult:
        """Run ``sql`` once the snapshot is ready and as fresh as the request asks.

        A request may name a position (``min_offsets`` query parameter, or the X-Min-Offsets
        header on any route): the answer waits up to ``wait_ms`` for the snapshot to reflect it,
        then gives up with 503 and Retry-After rather than answer from older data. Without
        one, a snapshot not loaded yet is a 503 at once, unless ``wait_ms`` is given. Every query
        passes :class:`SqlAdmission` first (429 / 503), and holds its place while it waits.
        """
        client = request.remote or "unknown"
        args = request.query if query_params else {}
        raw = args.get("min_offsets") or request.headers.get(MIN_OFFSETS_HEADER)
        asked_wait = args.get("wait_ms") or request.headers.get("X-Wait-Ms")
        wait_ms = parse_wait_ms(asked_wait)
        wanted = parse_min_offsets(raw, self.reader.partitions) if raw else {}
        if not wanted and asked_wait is None:
            # A replica still loading its snapshot answers 503 at once, so a client or a load
            # balancer asks another one instead of waiting (a rolling restart showed 2 s gaps).
            wait_ms = 0
        with self.admission.admit(client):
            await self.wait_for_snapshot(wanted, wait_ms)
            loop = asyncio.get_running_loop()
            result = await self.admission.run(client, lambda: loop.run_in_executor(
                self.threads, self.sql.execute, sql, params, row_limit))
            self.on_query(result.elapsed_ms / 1000)
            return result

    async def wait_for_snapshot(self, wanted: Mapping[int, int], wait_ms: int) -> None:
        state = self.reader.state
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

    def status(self) -> dict[str, Any]:
        state = self.reader.state
        counter = self.processor.counter
        return {
            "rst_id": state.generation,
            "snapshot_age_s": round(time.time() - state.refreshed_at_s, 3)
            if state.refreshed_at_s else None,
            "caught_up": state.caught_up,
            "complete": state.complete,
            # buckets ending at or before this minus grace are final (None: none is yet)
            "closing_time": state.closing_s if math.isfinite(state.closing_s) else None,
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
                "late": counter.late,
                "dead_letters": counter.dead_letters,
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


# /api/v1/buckets parameters other than column filters and from/to
BUCKETS_OPTIONS = ("limit", "min_offsets", "wait_ms", "format", "granularity", "tz", "group_by")
# snapshot columns that sqlite_schema does not list, and that filters may name too
EXTRA_COLUMNS = (RST_COLUMN, "late", "final")


@dataclass(frozen=True, slots=True)
class BucketFilters:
    """/api/v1/buckets' filters as SQL conditions with named parameters: ``columns`` on column
    values (parameters ``params``), ``times`` for from/to, stored buckets overlapping
    ``[from, to)`` (parameters ``time_params``)."""

    columns: list[str]
    times: list[str]
    params: dict[str, Any]
    time_params: dict[str, Any]


def mapped_columns(settings: Settings) -> list[str]:
    """The mapped columns, in the snapshot table's order."""
    mapped = set(settings.msg_map.values())
    return [column for column in settings.sqlite_schema if column in mapped]


def parse_flag(name: str, value: str) -> int:
    """``true``/``false`` (or ``1``/``0``) as SQLite's 1/0; anything else is 400."""
    flag = {"true": 1, "1": 1, "false": 0, "0": 0}.get(value.strip().lower())
    if flag is None:
        raise HttpError(400, f"{name} must be true or false, not {value!r}")
    return flag


def bucket_filters(query: Any, settings: Settings) -> BucketFilters:
    """The filters of /api/v1/buckets' query string; an unknown parameter is 400."""
    filters = BucketFilters([], [], {}, {})
    for index, (name, value) in enumerate(query.items()):
        key = f"f{index}"
        if name in BUCKETS_OPTIONS:
            continue
        if name == "from":
            filters.times.append(f"bucket_end > :{key}")
            filters.time_params[key] = parse_time_param(name, value)
        elif name == "to":
            filters.times.append(f"bucket_start < :{key}")
            filters.time_params[key] = parse_time_param(name, value)
        elif name == FINAL_COLUMN:  # ?final=true: final buckets only; false: open ones
            filters.columns.append(f"{quote_identifier(name)} = :{key}")
            filters.params[key] = parse_flag(name, value)
        elif name in settings.sqlite_schema or name in EXTRA_COLUMNS:
            filters.columns.append(f"{quote_identifier(name)} IS :{key}" if value == "" else
                                   f"{quote_identifier(name)} = :{key}")
            filters.params[key] = None if value == "" else value
        else:
            raise HttpError(400, f"unknown filter {name!r}", filters=[
                "from", "to", *BUCKETS_OPTIONS, *settings.sqlite_schema, *EXTRA_COLUMNS])
    return filters


async def rolled_up(service: Service, request: Any, plan: rollup.Rollup, filters: BucketFilters,
                    limit: int) -> EncodedResult:
    """/api/v1/buckets rolled up (:mod:`bucket_app.web.rollup`), in two queries.

    The first finds the first and last stored bucket the filters select; the granules in force
    there bound the second, which sums whole granules: ``from`` and ``to`` select the granules
    that overlap ``[from, to)``, as they select stored buckets. Buckets that a newer snapshot
    adds outside those bounds between the two queries are left for the next answer.
    """
    settings = service.settings
    table = quote_identifier(settings.sqlite_table)
    where = filters.columns + filters.times
    span = await service.query(
        request, f"SELECT min(bucket_start) AS lo, max(bucket_start) AS hi FROM {table}"
        + (" WHERE " + " AND ".join(where) if where else ""),
        filters.params | filters.time_params)
    [bounds] = formats.decode_rows(span)
    if bounds["lo"] is None:
        columns = [*plan.group_by, "bucket_start", "bucket_end", "count", "late", "final"]
        return EncodedResult(columns, orjson.Fragment(b"[]"), 0, False, span.elapsed_ms)
    first, last = int(bounds["lo"]), int(bounds["hi"])
    # Probing the zone for its transitions is CPU work proportional to the span: not on the loop.
    granules = await asyncio.to_thread(
        rollup.Granules, plan.zone, plan.granularity_s, first, last)
    lo, end = granules.start_of(first), granules.end_of(granules.start_of(last))
    granules.check_aligned(lo, end, settings.bucket_interval_s)
    params = dict(filters.params)
    sql = rollup.rollup_sql(settings.sqlite_table, plan, granules, lo, end - 1, filters.columns,
                            params, limit + 1)
    return await service.query(request, sql, params, row_limit=limit)


def register(app: faust.App, settings: Settings, reader: SnapshotReader, processor: Any,
             ) -> Service:
    """Add the views, the JSON errors and the token check to the Faust app's web server."""
    service = Service(settings, reader, processor)
    use_json_error_runner(app.web)
    # error_middleware first, so it renders the token check's 401 too
    app.web.web_app.middlewares.append(error_middleware)  # type: ignore[attr-defined]
    app.web.web_app.middlewares.append(  # type: ignore[attr-defined]
        auth_middleware(settings.http_token))
    if settings.http_token is None and not is_loopback(settings.web_host):
        log.warning("web_host is %s, not a loopback address, and http_token is not set: "
                    "anyone who can reach port %s can query the snapshot",
                    settings.web_host, settings.web_port)
    table = settings.sqlite_table
    all_rows_sql = f"SELECT * FROM {quote_identifier(table)}"

    @app.task
    async def start_sql_processes() -> None:
        # Started with the worker, so the first query does not wait for a Python to start.
        await asyncio.to_thread(service.sql.start)

    @app.page("/a/{table}")
    class AllRows(faust.web.View):
        """GET /a/<table>: every row of the snapshot table (seed route)."""

        async def get(self, request: Any, table: str) -> aioweb.StreamResponse:
            fmt = formats.negotiate(request.headers.get("Accept"), request.query.get("format"))
            if table != settings.sqlite_table:
                raise HttpError(
                    404, f"no table {table!r}; this service has {settings.sqlite_table!r}")
            result = await service.query(request, all_rows_sql)
            return await formats.respond(request, fmt, result, result.rows,
                                         service.headers(result))

    @app.page("/c/{sql:(?s:.*)}")  # a newline in the SQL too
    class Custom(faust.web.View):
        """GET /c/<sql>: the rest of the URL, decoded, as one read-only SQL statement (seed).

        The format comes from the Accept header alone: the query string is part of the SQL.
        """

        async def get(self, request: Any, sql: str) -> aioweb.StreamResponse:
            fmt = formats.negotiate(request.headers.get("Accept"))
            # The raw path keeps a '?' or '%' that belongs to the SQL; match_info would not.
            raw = request.raw_path.split("/c/", 1)[1] if "/c/" in request.raw_path else sql
            result = await service.query(request, unquote(raw), query_params=False)
            return await formats.respond(request, fmt, result, result.rows,
                                         service.headers(result))

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
            intake = getattr(app, "intake", None)
            reasons = [] if intake is None or intake.degraded is None else [intake.degraded]
            gone = brokerlog.install().unreachable()
            if gone:
                reasons.append("brokers unreachable: " + ", ".join(
                    f"node {broker} for {seconds:.0f} s" for broker, seconds in sorted(
                        gone.items())))
            full = diskspace.FULL.reasons()  # counting waits for space: 503
            reasons += full
            head = {"status": "degraded", "reason": "; ".join(reasons)} if reasons else {
                "status": "ok"}
            return json_response(head | service.status(), status=503 if full else 200,
                                 headers={"Retry-After": "1"} if full else None)

    @app.page(f"{API}/buckets")
    class Buckets(faust.web.View):
        """GET /api/v1/buckets?<column>=v&from=t&to=t&limit=n: filtered counts, with status;
        with granularity, tz or group_by, rolled up into granules of local time."""

        async def get(self, request: Any) -> aioweb.StreamResponse:
            query = request.query
            fmt = formats.negotiate(request.headers.get("Accept"), query.get("format"))
            limit = parse_limit(query.get("limit"), settings.sql_row_limit)
            plan = rollup.parse_rollup(
                query.get("granularity"), query.get("tz"), query.getall("group_by", None),
                settings.bucket_interval_s, mapped_columns(settings))
            filters = bucket_filters(query, settings)
            extra: dict[str, Any] = {}
            if plan is None:
                where = filters.columns + filters.times
                sql = all_rows_sql + (" WHERE " + " AND ".join(where) if where else "")
                sql += " ORDER BY bucket_start, rowid LIMIT :limit"
                params = filters.params | filters.time_params | {"limit": limit + 1}
                result = await service.query(request, sql, params, row_limit=limit)
            else:
                result = await rolled_up(service, request, plan, filters, limit)
                extra["rollup"] = plan.describe()
            body = {"rows": result.rows, "truncated": result.truncated} | extra | (
                service.status())
            return await formats.respond(request, fmt, result, body, service.headers(result))

    @app.page(f"{API}/sql")
    class Sql(faust.web.View):
        """GET ?q=... or POST {"sql": ..., "params": [...] | {...}}: read-only SQL, enveloped."""

        async def get(self, request: Any) -> aioweb.StreamResponse:
            fmt = formats.negotiate(request.headers.get("Accept"), request.query.get("format"))
            sql = request.query.get("q") or request.query.get("sql")
            if not sql:
                raise HttpError(400, "missing query parameter q")
            return await self._answer(request, sql, None, fmt)

        async def post(self, request: Any) -> aioweb.StreamResponse:
            fmt = formats.negotiate(request.headers.get("Accept"), request.query.get("format"))
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
            return await self._answer(request, sql, params, fmt)

        async def _answer(self, request: Any, sql: str, params: Any, fmt: str,
                          ) -> aioweb.StreamResponse:
            result = await service.query(request, sql, params)
            body = {
                "columns": result.columns, "rows": result.rows, "truncated": result.truncated,
                "elapsed_ms": round(result.elapsed_ms, 3),
            } | service.status()
            return await formats.respond(request, fmt, result, body, service.headers(result))

    del AllRows, Custom, Reset, RstId, Health, Buckets, Sql
    metrics.register(app, settings, service)
    stream.register(app, settings, service)
    dashboard.register(app, settings, service)
    openapi.register(app, settings, service)
    return service
