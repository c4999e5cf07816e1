"""The web answer while a worker waits for its brokers: ``/health`` says ``starting``.

Faust's web server starts only with the worker, after the brokers have been reached. Until
then :class:`StartingServer` holds the configured address on a thread of its own and answers
every route with 503 and the one JSON error shape, ``/health`` with ``status: "starting"``
and the reason, so an orchestrator's probe and a user's curl see why instead of a refused
connection. It is stopped, freeing the port for Faust, before the worker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import orjson
from aiohttp import web as aioweb

RETRY_AFTER_S = 2


class StartingServer:
    """A minimal aiohttp server on ``host:port`` answering 503 until :meth:`stop`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reason = "starting"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    async def _answer(self, request: aioweb.Request) -> aioweb.Response:
        if request.path.rstrip("/") == "/health":
            body: dict[str, Any] = {"status": "starting", "reason": self.reason}
        else:
            body = {"error": f"the worker is starting: {self.reason}", "status": 503}
        return aioweb.Response(body=orjson.dumps(body), status=503,
                               content_type="application/json",
                               headers={"Retry-After": str(RETRY_AFTER_S)})

    async def _serve(self) -> None:
        app = aioweb.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        runner = aioweb.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._stop = asyncio.Event()
        try:
            site = aioweb.TCPSite(runner, self.host, self.port, reuse_address=True)
            with contextlib.suppress(OSError):  # port taken: nothing to answer with
                await site.start()
            self._ready.set()
            await self._stop.wait()
        finally:
            self._ready.set()
            await runner.cleanup()

    def start(self) -> None:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="bucket_app-starting", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10)
