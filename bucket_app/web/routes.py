"""Every route, registered from one place on the Faust app's web server.

:func:`groups` lists the route modules' declarations (:mod:`bucket_app.web.declare`) and the
OpenAPI document generated from them; :func:`register` adds each route as a Faust view whose
handler parses the declared parameters (:func:`~bucket_app.web.declare.parse_args`, the one
place a parameter is refused) and hands them to the route, plus the JSON error and token
middlewares and the runner that renders aiohttp's own errors as JSON. Nothing here starts
anything: the worker owns the SQL processes, the snapshot reader and the samplers
(:mod:`bucket_app.parts`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import faust
from aiohttp import web as aioweb
from prometheus_client import CollectorRegistry

from bucket_app.web import api, dashboard, metrics, openapi, seed, stream
from bucket_app.web.declare import Group, Route, parse_args
from bucket_app.web.middleware import (
    auth_middleware,
    error_middleware,
    is_loopback,
    use_json_error_runner,
)
from bucket_app.web.service import Service

log = logging.getLogger(__name__)


def groups(service: Service, registry: CollectorRegistry,
           assets: dict[str, tuple[bytes, str]] | None = None) -> list[Group]:
    """Every route group, the OpenAPI document's last (it describes the others and itself)."""
    found = [seed.group(service), api.group(service), stream.group(service),
             dashboard.group(service, dashboard.load_assets() if assets is None else assets),
             metrics.group(registry)]
    return [*found, openapi.group(service.settings, found)]


def view(name: str, routes: Sequence[Route]) -> type[faust.web.View]:
    """A Faust view answering ``routes`` (one per method) on their path."""

    def handler(route: Route) -> Any:
        async def handle(self: faust.web.View, request: aioweb.Request,
                         **_path: str) -> aioweb.StreamResponse:
            return await route.answer(request, await parse_args(route, request))

        handle.__doc__ = route.summary
        return handle

    return type(name, (faust.web.View,), {
        route.method.lower(): handler(route) for route in routes})


def _matcher(paths: Sequence[str]) -> Any:
    """Whether a request path is one of these route paths (a placeholder matches any tail)."""
    exact = frozenset(p for p in paths if "{" not in p)
    prefixes = tuple(p[:p.index("{")] for p in paths if "{" in p)
    return lambda path: path in exact or (bool(prefixes) and path.startswith(prefixes))


def register(app: faust.App, service: Service, registry: CollectorRegistry) -> list[Group]:
    """Add every route, the JSON errors and the token check to the Faust app's web server."""
    settings = service.settings
    declared = groups(service, registry)
    every = [route for group in declared for route in group.routes]
    web: Any = app.web  # the aiohttp driver: web_app is not in faust's Web type
    use_json_error_runner(web)
    # error_middleware first, so it renders the token check's 401 too
    web.web_app.middlewares.append(error_middleware)
    web.web_app.middlewares.append(auth_middleware(
        settings.http_token, _matcher([r.path for r in every if r.public]),
        _matcher([r.path for r in every if r.query_token])))
    if settings.http_token is None and not is_loopback(settings.web_host):
        log.warning("web_host is %s, not a loopback address, and http_token is not set: "
                    "anyone who can reach port %s can query the snapshot",
                    settings.web_host, settings.web_port)
    by_path: dict[str, list[Route]] = {}
    for route in every:
        by_path.setdefault(route.path, []).append(route)
    for index, (path, routes) in enumerate(by_path.items()):
        app.page(path)(view(f"Route{index}", routes))
    for group in declared:
        web.web_app.on_shutdown.extend(group.on_shutdown)
    return declared
