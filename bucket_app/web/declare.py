"""A route declared once: its parameters, body and answers, read by both the request parsing
and the OpenAPI document.

Each route module (:mod:`~bucket_app.web.seed`, :mod:`~bucket_app.web.api`,
:mod:`~bucket_app.web.stream`, :mod:`~bucket_app.web.dashboard`,
:mod:`~bucket_app.web.metrics`) lists its :class:`Route` values; :mod:`bucket_app.web.routes`
registers them and :mod:`bucket_app.web.openapi` describes them, as starlette's schema
generator reads its route table. So a parameter the document names is one the route reads,
with the schema the parser holds it to, and :func:`parse_args` is the one place a parameter is
refused with 400: a parser raises :class:`Invalid`, which names no status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web as aioweb

from bucket_app.errors import HttpError

Schema = dict[str, Any]
#: a route's parsed parameters (and body), by :attr:`Param.key`
Args = dict[str, Any]
Answer = Callable[[aioweb.Request, Args], Awaitable[aioweb.StreamResponse]]
STRING: Schema = {"type": "string"}


class Invalid(ValueError):
    """A parameter value a parser refuses: the message, and context for the error body."""

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context


def identity(raw: str) -> str:
    return raw


@dataclass(frozen=True)
class Param:
    """One parameter: where it is read, its schema and description, and its parser.

    Several parameters may fill one :attr:`key` (a query parameter and its header twin): the
    first declared that is present wins. ``blank_absent``: an empty value counts as absent.
    ``many``: every occurrence is parsed, and the argument is their list.
    """

    name: str
    description: str
    schema: Schema = field(default_factory=lambda: dict(STRING))
    parse: Callable[[str], Any] = identity
    where: Literal["query", "header", "path"] = "query"
    key: str = ""
    blank_absent: bool = False
    many: bool = False

    @property
    def arg(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class Body:
    """A JSON request body: its schema and the parser of the decoded value (raises Invalid)."""

    schema_ref: str
    parse: Callable[[Any], Args]


@dataclass(frozen=True)
class Route:
    """One method on one path, as registered and as documented.

    ``answers``: OpenAPI response objects by status, besides the errors every route of its
    kind shares (``queries``: runs SQL through admission; ``negotiates``: picks a format from
    Accept); ``errors``: more error statuses it answers. ``strict``: an unknown query
    parameter is 400, with this message (``{name}`` filled in) and the known names under
    this context key. ``public``: open without
    the token; ``query_token``: also takes it as ``?access_token=``. ``check``: refuses
    arguments that are wrong together (raises Invalid).
    """

    method: Literal["GET", "POST"]
    path: str
    summary: str
    answer: Answer
    answers: Mapping[str, Schema]
    params: tuple[Param, ...] = ()
    body: Body | None = None
    description: str = ""
    queries: bool = False
    negotiates: bool = False
    errors: tuple[int, ...] = ()
    strict: tuple[str, str] | None = None
    check: Callable[[Args], None] | None = None
    public: bool = False
    query_token: bool = False


def _raw(param: Param, request: aioweb.Request) -> list[str]:
    if param.where == "header":
        found = request.headers.get(param.name)
        raws = [] if found is None else [found]
    elif param.where == "path":
        raws = [request.match_info[param.name]] if param.name in request.match_info else []
    elif param.many:
        raws = request.query.getall(param.name, [])
    else:
        raws = [request.query[param.name]] if param.name in request.query else []
    return [raw for raw in raws if raw != ""] if param.blank_absent else raws


async def parse_args(route: Route, request: aioweb.Request) -> Args:
    """The route's arguments from ``request``; every refused parameter is a 400 from here."""
    args: Args = {}
    try:
        for param in route.params:
            raws = [] if param.arg in args else _raw(param, request)
            if raws:
                values = [param.parse(raw) for raw in raws]
                args[param.arg] = values if param.many else values[0]
        if route.strict is not None:
            known = [p.name for p in route.params if p.where == "query"]
            for name in request.query:
                if name not in known:
                    message, listed = route.strict
                    raise Invalid(message.format(name=repr(name)), **{listed: known})
        if route.body is not None:
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                raise Invalid(f"body is not JSON: {exc}") from None
            args |= route.body.parse(body)
        if route.check is not None:
            route.check(args)
    except Invalid as exc:
        raise HttpError(400, exc.message, **exc.context) from None
    return args


@dataclass(frozen=True)
class Group:
    """A module's routes, and the answer schemas they name (``#/components/schemas/<name>``)."""

    routes: list[Route]
    schemas: dict[str, Schema] = field(default_factory=dict)
    #: called when the web server shuts down, before it waits for answers under way
    on_shutdown: list[Callable[[aioweb.Application], Awaitable[None]]] = field(
        default_factory=list)
