"""Faust's aiohttp web server, serving with a runner of the app's choosing.

aiohttp has no option for how its HTTP parser errors are rendered; the class it makes per
connection is fixed in ``Server.__call__``, and the server is built in the private
``BaseRunner._make_server``. Faust's aiohttp driver keeps its runner in ``Web._runner`` and
starts it in ``start_server``, with no option for the runner either.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web as aioweb


class ServerClassRunner(aioweb.AppRunner):
    """An AppRunner whose server is made a ``server_class`` (a subclass of aiohttp's Server
    adding methods only, no state)."""

    server_class: ClassVar[type[aioweb.Server]] = aioweb.Server

    async def _make_server(self) -> aioweb.Server:
        server = await super()._make_server()
        server.__class__ = self.server_class
        return server


def replace_runner(web: Any, runner: aioweb.AppRunner) -> None:
    """Make Faust's web driver ``web`` (not started) serve with ``runner``."""
    current = getattr(web, "_runner", None)
    if not isinstance(current, aioweb.AppRunner) or current.server is not None:
        raise RuntimeError(f"faust's web driver has no unstarted AppRunner in _runner "
                           f"({current!r})")
    web._runner = runner
