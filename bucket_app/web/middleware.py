"""The HTTP plumbing every route shares: JSON answers, the one error shape, the token check.

Every error is an :class:`~bucket_app.errors.HttpError` rendered as JSON in one place
(:func:`error_middleware`), which also turns aiohttp's own 404/405 and any unexpected exception
into the same shape, so a client never sees an HTML page or a traceback. What aiohttp refuses
before any middleware runs (a URL or header line over its limits, a request line it cannot
parse) gets the same shape from :class:`JsonErrorRequestHandler`. With ``http_token`` set,
every route but the public ones needs ``Authorization: Bearer <token>``
(:func:`auth_middleware`). Routes live in their own modules (:mod:`bucket_app.web.routes`
registers them); this module knows none of them.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web as aioweb
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from bucket_app.errors import HttpError
from bucket_app.seam import web as web_seam
from bucket_app.sql.sandbox import json_default

log = logging.getLogger(__name__)

API = "/api/v1"
JSON_TYPE = "application/json"
# aiohttp's parser limits. They must differ: a parser error names only the limit it hit, and
# that tells a URL too long (414) from a header too long (431). 16 KiB of URL leaves /c/ room
# for a long percent-encoded statement; 8190 is aiohttp's own header default.
MAX_URL_BYTES = 16_384
MAX_HEADER_BYTES = 8_190
# how often a request waiting for min_offsets looks at the snapshot reader's position


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


def auth_middleware(token: str | None, public: Callable[[str], bool],
                    query_token: Callable[[str], bool],
                    ) -> Callable[..., Awaitable[aioweb.StreamResponse]]:
    """Every path but the ``public`` ones needs ``Authorization: Bearer <token>`` when a token
    is set; those ``query_token`` accepts also take it as ``?access_token=<token>`` (a browser's
    EventSource cannot send headers). The routes declare which is which."""
    expected = None if token is None else token.encode()

    @aioweb.middleware
    async def check_token(
        request: aioweb.Request,
        handler: Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]],
    ) -> aioweb.StreamResponse:
        path = request.path
        if expected is not None and not public(path):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if not given.strip() and query_token(path):
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


