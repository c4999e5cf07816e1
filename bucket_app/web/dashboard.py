"""GET /: the dashboard page, its static assets (/static/<name>) and GET /api/v1/meta.

The page (``static/index.html`` and ``dashboard.js``) is a client of the JSON API only: it
reads the mapped columns from /api/v1/meta, counts from /api/v1/buckets, live changes from
/api/v1/stream and runs user SQL on /api/v1/sql, so it shows nothing the API would not. The
assets ship inside the package and are read once at start-up into memory, served from a fixed
list of names (no path from the URL ever reaches the file system), so the page works offline:
the chart library, uPlot, is vendored under ``static/vendor`` with its licence.

The page and its assets hold no data, and a browser cannot add an Authorization header to a
page it navigates to: with ``http_token`` set they stay public (auth_middleware), and the page
sends the token a user typed on every API call it makes (their routes are declared public).
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from typing import Any

from aiohttp import web as aioweb

from bucket_app.errors import HttpError
from bucket_app.web.declare import Args, Group, Param, Route, Schema
from bucket_app.web.middleware import API, json_response
from bucket_app.web.schemas import TEXT, json_answer
from bucket_app.web.service import Service

STATIC_PREFIX = "/static/"
INDEX = "index.html"
# What the worker serves under /static/: every file of the package's static/ tree.
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
         ".txt": "text/plain", ".svg": "image/svg+xml", ".png": "image/png"}
# The assets change only with the package, but a browser should see a new version at once.
CACHE = "no-cache"
# The page's granularity choices (seconds); the API also takes any multiple of the interval.
GRANULARITIES = {"5m": 300, "1h": 3600, "1d": 86400}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file under bucket_app/web/static, by its relative path, with its content type."""
    assets: dict[str, tuple[bytes, str]] = {}
    root = resources.files("bucket_app.web").joinpath("static")

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
            elif not entry.name.startswith("."):
                suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
                kind = TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0]
                if kind is None and entry.name.endswith("LICENSE"):
                    kind = "text/plain"
                if kind is not None:
                    assets[name] = (entry.read_bytes(), kind)

    walk(root, "")
    return assets


def meta(service: Service) -> dict[str, Any]:
    """What the page needs to know about this service before asking for counts."""
    settings = service.settings
    return {
        "table": settings.sqlite_table,
        "columns": service.mapped_columns,
        "schema": dict(settings.sqlite_schema),
        "bucket_interval_s": settings.bucket_interval_s,
        "granularities": GRANULARITIES,
        "auth": settings.http_token is not None,
        "stream": f"{API}/stream",
        # /api/v1/buckets rolls up itself (granularity, tz, group_by); else the page would
        "rollup": True,
    }


META: Schema = {
    "type": "object", "required": ["table", "columns", "bucket_interval_s"],
    "properties": {
        "table": {"type": "string"},
        "columns": {"type": "array", "items": {"type": "string"}},
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        "bucket_interval_s": {"type": "integer"},
        "granularities": {"type": "object", "additionalProperties": {"type": "integer"}},
        "auth": {"type": "boolean"},
        "stream": {"type": "string"},
        "rollup": {"type": "boolean"}}}


def asset_response(assets: dict[str, tuple[bytes, str]], name: str) -> aioweb.Response:
    if name not in assets:
        raise HttpError(404, f"no static file {name!r}")
    body, kind = assets[name]
    charset = "utf-8" if kind.startswith("text/") or kind.endswith("javascript") else None
    return aioweb.Response(body=body, content_type=kind, charset=charset,
                           headers={"Cache-Control": CACHE,
                                    "X-Content-Type-Options": "nosniff"})


def group(service: Service, assets: dict[str, tuple[bytes, str]]) -> Group:
    """GET /, GET /static/<name> and GET /api/v1/meta, serving ``assets``
    (:func:`load_assets`)."""
    settings = service.settings
    assets = dict(assets)
    if INDEX not in assets:
        raise RuntimeError("bucket_app/web/static/index.html is missing from the package")
    info = meta(service)
    if settings.http_token is not None:
        # the page asks for the token before its first API call, rather than meet a 401
        page, kind = assets[INDEX]
        assets[INDEX] = (page.replace(b"<body>", b'<body data-auth="1">', 1), kind)

    async def index(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        return asset_response(assets, INDEX)

    async def static(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        return asset_response(assets, args["name"])

    async def meta_answer(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        return json_response(info)

    meta_schema = META | {"properties": META["properties"] | {
        "table": {"const": settings.sqlite_table},
        "bucket_interval_s": {"const": settings.bucket_interval_s}}}
    return Group([
        Route("GET", "/", "the dashboard page", index, {"200": {
            "description": "HTML", "content": {"text/html": TEXT}}}, public=True),
        Route("GET", STATIC_PREFIX + "{name:.+}", "one of the dashboard's assets", static, {
            "200": {"description": "the file", "content": {
                kind: TEXT for kind in sorted(set(TYPES.values()))}}},
            (Param("name", "the asset's path", {"type": "string", "enum": sorted(assets)},
                   where="path"),), errors=(404,), public=True),
        Route("GET", f"{API}/meta", "what the dashboard needs first: table, mapped columns, "
              "interval", meta_answer, {"200": json_answer("the service's shape",
                                                          {"$ref": "#/components/schemas/Meta"})}),
    ], {"Meta": meta_schema})
