"""SQL admission: which queries may wait, and which one runs next on a free SQL process.

Every route that runs SQL passes :class:`SqlAdmission` (through
:meth:`bucket_app.web.service.Service.query`): a few queries per client address, a bounded
number in all, and the SQL child processes handed out least-used client first, so one client's
runaway queries cannot make everyone else wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from bucket_app.errors import HttpError

# How fast a client's SQL time is forgiven when choosing who runs next (see SqlAdmission).
USAGE_HALF_LIFE_S = 60.0
# clients whose SQL time SqlAdmission remembers; beyond it the least-used are forgotten
USAGE_CLIENTS_KEPT = 4096

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

