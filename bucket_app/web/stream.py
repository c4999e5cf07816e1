"""GET /api/v1/stream: Server-Sent Events of the snapshot rows each refresh changed.

Every snapshot row carries ``RST_ID``, the generation that last wrote it, so once a client has
every row as of generation ``g``, the rows with ``RST_ID > g`` are exactly what it lacks. A
stream polls the snapshot reader's in-memory state (cheap: two attribute reads) and, when the
generation moves, asks SQLite for those rows (through :meth:`Service.query`, so streams pass the
same admission control and SQL pool as every other query) and sends one ``row`` event each. Its
filters are those of /api/v1/buckets, built by the same :func:`~bucket_app.web.params.row_filters`.

The last row of a refresh carries the position token (:func:`params.encode_token`) as its SSE
``id``; a refresh that changed no row of this stream's filters sends a bare ``id:`` line, which
moves the client's last event id without firing an event. A reconnecting client sends that id
back (``Last-Event-ID`` header, as browsers do, or ``?last_event_id=``) and gets what changed
since. Tokens are mapped to generations in a bounded in-memory map of this process
(:class:`Positions`); a token it does not know (another replica's, or one too old, or none at
all) gets the full current set first. Rows are absolute counts, so a row sent twice is
harmless: the client keeps the latest; re-sending is the price of never leaving a gap. For the
same reason a token maps to the generation *before* the one current when it was seen: a token
read a moment ahead of the data it came with (the snapshot reader sets the generation and the
position one after the other, not at once) then costs a re-send of one refresh, not a gap.

A row deleted from the snapshot (retention, ``clean_interval``) sends no event. Comments keep
idle connections open through proxies every :data:`KEEPALIVE_S`. A stream ends when its client
disconnects (seen within :data:`POLL_S`) or when the web server shuts down (aiohttp's
``on_shutdown``, before it waits for handlers), and at most :attr:`StreamHub.limit` run at
once: one more gets 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web as aioweb

from bucket_app.errors import HttpError
from bucket_app.settings import RST_COLUMN
from bucket_app.sql.sandbox import quote_identifier
from bucket_app.web.declare import Args, Group, Param, Route
from bucket_app.web.middleware import API
from bucket_app.web.params import encode_token, filter_params, row_filters
from bucket_app.web.schemas import TEXT
from bucket_app.web.service import Service

log = logging.getLogger(__name__)

PATH = f"{API}/stream"
# How often a stream looks at the reader's generation and its client's connection: well under
# the "within about a second" of the spec, and a few attribute reads each time.
POLL_S = 0.2
# A comment this often keeps proxies and load balancers from closing an idle stream.
KEEPALIVE_S = 15.0
# Streams open at once per worker; each costs a query per refresh that changed anything.
MAX_STREAMS = 32
# token -> generation pairs remembered; at two refreshes a second, over half an hour.
TOKENS_KEPT = 4096
# After admission control refused a stream's query (429 / 503), it tries again this much later.
BUSY_RETRY_S = 1.0
# How long a browser waits before reconnecting (the SSE ``retry`` field).
RECONNECT_MS = 2000


class Positions:
    """A bounded map of recently seen position tokens to the generation a holder has reached.

    Single-threaded: used only from the web server's event loop.
    """

    def __init__(self, kept: int = TOKENS_KEPT) -> None:
        self.kept = kept
        self._map: OrderedDict[str, int] = OrderedDict()

    def note(self, token: str, generation: int) -> None:
        """Remember that ``token`` was seen while ``generation`` was current."""
        reached = max(generation - 1, 0)
        known = self._map.pop(token, None)
        # the same token seen at several generations (a refresh that did not move the
        # source position): the lowest is the one every holder has reached
        self._map[token] = reached if known is None else min(known, reached)
        while len(self._map) > self.kept:
            self._map.popitem(last=False)

    def reached(self, token: str | None) -> int:
        """The generation a client holding ``token`` has every row of (0: none known)."""
        if not token:
            return 0
        return self._map.get(token.strip(), 0)

    def forget(self) -> None:
        self._map.clear()

    def __len__(self) -> int:
        return len(self._map)


class StreamHub:
    """This worker's streams: how many are open, the token map, and whether to stop."""

    def __init__(self, limit: int | None = None) -> None:
        """``limit``: MAX_STREAMS as it is when a stream asks, unless given."""
        self._limit = limit
        self.active = 0
        self.closing = False
        self.positions = Positions()

    @property
    def limit(self) -> int:
        return MAX_STREAMS if self._limit is None else self._limit

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``limit`` places, or raise 429."""
        if self.active >= self.limit:
            raise HttpError(429, f"too many streams open: {self.active}, the limit is "
                            f"{self.limit}", retry_after_s=5, limit=self.limit)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def close(self, _app: aioweb.Application | None = None) -> None:
        """Make every stream end (an aiohttp ``on_shutdown`` callback)."""
        self.closing = True


def sse(data: bytes | None = None, *, event: str | None = None,
        event_id: str | None = None) -> bytes:
    """One SSE message. Without data it is not dispatched, but an ``id`` still takes effect."""
    lines = []
    if event is not None:
        lines.append(b"event: " + event.encode())
    if data is not None:
        lines.append(b"data: " + data)  # orjson output has no newline in it
    if event_id is not None:
        lines.append(b"id: " + event_id.encode())
    return b"\n".join(lines) + b"\n\n"


def connected(request: Any) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


class Stream:
    """One client's stream: sends the rows changed after generation ``seen``, refresh by refresh."""

    def __init__(self, request: aioweb.Request, response: aioweb.StreamResponse,
                 service: Service, hub: StreamHub, args: Args, seen: int) -> None:
        self.request = request
        self.response = response
        self.service = service
        self.hub = hub
        self.seen = seen
        table = quote_identifier(service.settings.sqlite_table)
        filters = row_filters(args)
        conditions = " AND ".join(
            [f"{RST_COLUMN} > :seen", "rowid > :after", *filters.columns, *filters.times])
        # rowid pages a refresh larger than the row limit; a row rewritten while paging gets a
        # newer RST_ID, so the next refresh's query finds it if this one's pages passed it.
        self.sql = (f"SELECT rowid AS _stream_rowid, * FROM {table} WHERE {conditions} "
                    f"ORDER BY rowid LIMIT :limit")
        self.params = filters.params | filters.time_params
        self.row_limit = service.settings.sql_row_limit
        self.last_write = time.monotonic()

    async def write(self, data: bytes) -> None:
        await self.response.write(data)
        self.last_write = time.monotonic()

    async def run(self) -> None:
        await self.write(f"retry: {RECONNECT_MS}\n\n".encode())
        while not self.hub.closing and connected(self.request):
            state = self.service.reader.state
            generation = state.generation
            if generation < self.seen:  # the snapshot was rebuilt from the changelog
                self.seen = 0
                self.hub.positions.forget()
            if generation > self.seen:
                token = encode_token(state.position())
                self.hub.positions.note(token, generation)
                if not await self.send_changes(token):
                    await asyncio.sleep(BUSY_RETRY_S)
                    continue
                self.seen = generation
            elif time.monotonic() - self.last_write >= KEEPALIVE_S:
                await self.write(b": keep-alive\n\n")
            await asyncio.sleep(POLL_S)

    async def send_changes(self, token: str) -> bool:
        """Send every row with RST_ID > seen, the last one with ``token`` as its id.

        False when admission control refused a query: the caller tries the refresh again.
        """
        after_rowid = -1
        held: bytes | None = None  # the last row so far: it gets the id once we know it's last
        while True:
            try:
                result = await self.service.query(
                    self.request, self.sql, self.params | {
                        "seen": self.seen, "after": after_rowid, "limit": self.row_limit + 1},
                    row_limit=self.row_limit)
            except HttpError as exc:
                if exc.status in (429, 503):
                    if held is not None:
                        await self.write(sse(held, event="row"))
                    return False
                raise
            rows = orjson.loads(orjson.dumps(result.rows))
            for row in rows:
                after_rowid = row.pop("_stream_rowid")
                if held is not None:
                    await self.write(sse(held, event="row"))
                held = orjson.dumps(row)
            if not result.truncated:
                break
        await self.write(sse(held, event="row", event_id=token) if held is not None else
                         sse(event_id=token))
        return True


def group(service: Service) -> Group:
    """GET /api/v1/stream; its :class:`StreamHub` ends every stream on the server's shutdown."""
    hub = StreamHub()

    async def event_stream(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        with hub.slot():
            response = aioweb.StreamResponse(headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            })
            await response.prepare(request)
            stream = Stream(request, response, service, hub, args,
                            hub.positions.reached(args.get("last_event_id")))
            try:
                await stream.run()
            except ConnectionError:  # the client went away mid-write
                pass
            except HttpError as exc:  # after prepare(): tell the client in the stream
                with contextlib.suppress(ConnectionError):
                    # not "error": EventSource fires that name for a lost connection too
                    await response.write(sse(orjson.dumps(exc.as_json()), event="problem"))
        return response

    params = (*filter_params(service.settings.sqlite_schema),
              Param("Last-Event-ID", "the id of the last event received: only later changes",
                    where="header", key="last_event_id", blank_absent=True),
              Param("last_event_id", "as the Last-Event-ID header"),
              Param("access_token", "the http_token, for clients that cannot set a header"))
    return Group([Route(
        "GET", PATH, "Server-Sent Events: a `row` event per row each refresh changed; the "
        "last of a refresh has the position token as its id", event_stream,
        {"200": {"description": "an endless event stream",
                 "content": {"text/event-stream": TEXT}}},
        params, errors=(429, 503), strict=("unknown stream parameter {name}", "parameters"),
        query_token=True)], on_shutdown=[hub.close])
