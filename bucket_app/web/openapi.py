"""GET /api/v1/openapi.json: the OpenAPI 3.1 document, generated from the route declarations.

Every operation comes from a :class:`~bucket_app.web.declare.Route` that
:mod:`bucket_app.web.routes` also registers, as starlette's schema generator reads its route
table: its parameters with the schemas :func:`~bucket_app.web.declare.parse_args` holds them to,
its request body, its answers, and the errors of its kind (every route can meet the parser's;
routes that run SQL admission's; routes that negotiate a format 406). With ``http_token`` set,
every route but the public ones declares the bearer scheme and 401. Errors everywhere have the
one shape of :func:`bucket_app.web.middleware.error_response`; a 5xx other than 503 is never
described, because it never happens on purpose. ``tests/unit/web/test_openapi.py`` validates
real answers against the document, ``tests/integration/test_openapi.py`` a live worker's, with
schemathesis.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from aiohttp import web as aioweb

from bucket_app.settings import Settings
from bucket_app.web.declare import Args, Group, Param, Route, Schema
from bucket_app.web.middleware import API, JSON_TYPE, json_response
from bucket_app.web.schemas import ERROR, headers, json_answer, ref, responses
from bucket_app.web.service import mapped_columns

PATH = f"{API}/openapi.json"
OPENAPI_VERSION = "3.1.0"
PARSER_ERRORS = (400, 414, 431)
QUERY_ERRORS = (400, 429, 503)
FORMAT_ERRORS = (406,)
# aiohttp's {name:regex} placeholders are OpenAPI's {name}
_PLACEHOLDER = re.compile(r"\{(\w+):.*?\}(?=/|$)")


def template(path: str) -> str:
    return _PLACEHOLDER.sub(r"{\1}", path)


def parameter(param: Param) -> Schema:
    return {"name": param.name, "in": param.where, "required": param.where == "path",
            "description": param.description, "schema": param.schema}


def operation(route: Route, token: bool) -> Schema:
    """The route's OpenAPI operation; ``token``: http_token is set."""
    found: Schema = {"summary": route.summary}
    if route.description:
        found["description"] = route.description
    if route.params:
        found["parameters"] = [parameter(p) for p in route.params]
    if route.body is not None:
        found["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": ref(route.body.schema_ref)}}}
    errors = {*PARSER_ERRORS, *route.errors}
    if route.queries:
        errors.update(QUERY_ERRORS)
    if route.negotiates:
        errors.update(FORMAT_ERRORS)
    if route.public:
        found["security"] = []
    elif token:
        errors.add(401)
        if route.query_token:
            found["security"] = [{"bearer": []}, {"access_token": []}]
    answers = dict(route.answers)
    for status in errors:
        answers.setdefault(str(status), ref(str(status), "responses"))
    found["responses"] = dict(sorted(answers.items()))
    words = [w.strip("{}") for w in template(route.path).replace(".", "_").split("/") if w]
    found["operationId"] = "_".join([route.method.lower(), *(words or ["index"])])
    return found


def build(settings: Settings, groups: Sequence[Group]) -> dict[str, Any]:
    """The OpenAPI document of these route groups on a worker with these settings."""
    token = settings.http_token is not None
    paths: dict[str, dict[str, Schema]] = {}
    schemas: dict[str, Schema] = {}
    for group in groups:
        schemas |= group.schemas
        for route in group.routes:
            paths.setdefault(template(route.path), {})[route.method.lower()] = operation(
                route, token)
    components: dict[str, Any] = {
        "schemas": {"Error": ERROR} | schemas, "headers": headers(),
        "responses": responses()}
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "bucket_app",
            "version": _version(),
            "description": (
                f"Counts of topic `{settings.topic}` in {settings.bucket_interval_s}-second "
                f"buckets, table `{settings.sqlite_table}`, grouped by "
                f"{', '.join(mapped_columns(settings)) or 'nothing'}. Every error is "
                "`{\"error\": str, \"status\": int, ...}`, a 4xx or a 503."),
        },
        "paths": paths,
        "components": components,
    }
    if token:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "access_token": {"type": "apiKey", "in": "query", "name": "access_token",
                             "description": "the token as a query parameter, where a client "
                             "cannot set a header (a browser's EventSource)"}}
        document["security"] = [{"bearer": []}]
    return document


def _version() -> str:
    try:
        return metadata.version("bucket_app")
    except metadata.PackageNotFoundError:
        return "0"


def group(settings: Settings, groups: Sequence[Group]) -> Group:
    """GET /api/v1/openapi.json, describing ``groups`` and itself; built once, now."""

    async def serve(request: aioweb.Request, args: Args) -> aioweb.StreamResponse:
        return aioweb.Response(body=body, content_type=JSON_TYPE)

    own = Group([Route("GET", PATH, "this document", serve,
                       {"200": json_answer("OpenAPI 3.1", ref("OpenApi"))})],
                {"OpenApi": {"type": "object", "required": ["openapi", "info", "paths"]}})
    body = json_response(build(settings, [*groups, own])).body
    return own
