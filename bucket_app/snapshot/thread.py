"""A coroutine on a thread and event loop of its own, awaited from the worker's loop.

The snapshot reader and the output-topic publisher run so: on the worker's main loop each of
their awaits (a fetch, a refresh, a send) would wait behind the batch being counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any


async def run_in_own_thread(run: Callable[[], Coroutine[Any, Any, None]],
                            stopping: threading.Event, name: str) -> None:
    """Run ``run()`` with ``asyncio.run`` on a daemon thread named ``name``; return or raise as
    it does. Cancelled, it sets ``stopping``, which ``run`` polls to end."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not finished.done():
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

    def target() -> None:
        error: BaseException | None = None
        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the worker's loop has closed
            loop.call_soon_threadsafe(settle, error)

    stopping.clear()
    threading.Thread(target=target, name=name, daemon=True).start()
    try:
        await finished
    finally:
        stopping.set()
