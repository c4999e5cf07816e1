"""``bucket-app``: the operator's command line — check the settings, produce demo data, query.

``check`` loads the settings exactly as the worker does (:func:`bucket_app.settings.load`) and
shows each key's effective value and its source, secrets masked. ``produce`` writes demo
messages the settings count, to their topic with their security
(:func:`bucket_app.kafka.security.client_kwargs`); :class:`~bucket_app.demo.DemoMessages`
builds them, a pure function of the message's index and event time. ``query`` sends SQL to a
running worker's ``POST /api/v1/sql`` and prints the rows (:mod:`bucket_app.client`).
``uses-local-broker`` answers the Makefile: does ``make run`` need ``make kafka``?

Exit status: 0 done, 1 the worker or the brokers failed us, 2 bad settings or arguments.
The Kafka producer and tqdm are imported by ``produce`` only, so ``query`` starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bucket_app import settings as settings_module
from bucket_app.client import one_line, render, render_table, run_query
from bucket_app.demo import DemoMessages, spread_time
from bucket_app.errors import (
    BucketAppError,
    QueryError,
    RegistryError,
    RegistryRefused,
)
from bucket_app.settings import KEYS_BY_NAME, SECRET_KEYS, SETTINGS_ENV, Settings

__all__ = ["LOCAL_BROKERS", "DemoMessages", "build_parser", "main", "produce_summary", "render",
           "render_table", "run_query", "settings_rows", "spread_time"]

PROG = "bucket-app"
LOCAL_BROKERS = frozenset({"127.0.0.1:9092", "localhost:9092"})
EXIT_FAILED = 1
EXIT_USAGE = 2
TOKEN_ENV = KEYS_BY_NAME["http_token"].env
FORMATS = ("table", "csv", "json")
_UNSET = frozenset({"", "none", "null"})
# Forget acknowledged sends this often, so an endless run keeps bounded memory.
_TRIM_EVERY = 1000


def _fail(message: str, status: int) -> int:
    print(f"bucket_app: {message}", file=sys.stderr)
    return status


# ---- check ------------------------------------------------------------------------------------


def settings_rows(found: Mapping[str, tuple[str, str]],
                  environ: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(section, key, value, source) per key; secrets that are set shown as ``***``."""
    rows = []
    for name, (text, origin) in found.items():
        key = KEYS_BY_NAME[name]
        value = text.strip().replace("\r", "\\r").replace("\n", "\\n")
        source = {"env": f"environment ({key.env})"}.get(origin, origin)
        if name == "web_port" and environ.get("PORT"):
            value, source = environ["PORT"].strip(), "environment (PORT)"
        if name in SECRET_KEYS and value.lower() not in _UNSET:
            value = "***"
        rows.append((key.section, name, value, source))
    return rows


def cmd_check(args: argparse.Namespace) -> int:
    # imported here: aiokafka is only needed to check the TLS files and codecs, not to ask
    # uses-local-broker
    from bucket_app.kafka import codecs  # noqa: PLC0415
    from bucket_app.kafka.security import ssl_context  # noqa: PLC0415

    try:
        settings = settings_module.load(args.settings)
        ssl_context(settings)  # the PEM files load, as every Kafka client will need them to
        codecs.check()  # every compressed batch can be read, as the worker checks at start
        if settings.schema_registry_url is not None:
            from bucket_app.kafka.registry import RegistryClient  # noqa: PLC0415

            RegistryClient(settings)  # and the registry's CA file
        found = settings_module.sources(args.settings)
    except BucketAppError as exc:
        return _fail(str(exc), EXIT_USAGE)
    print(f"bucket_app: {settings.source} is valid; topic {settings.topic} "
          f"on {','.join(settings.brokers)}")
    print(render_table(("section", "key", "value", "source"),
                       settings_rows(found, os.environ)), end="")
    return 0


def cmd_uses_local_broker(args: argparse.Namespace) -> int:
    try:
        settings = settings_module.load(args.settings)
    except BucketAppError as exc:
        return _fail(str(exc), EXIT_USAGE)
    return 0 if set(settings.brokers) <= LOCAL_BROKERS else 1


# ---- produce: demo messages -------------------------------------------------------------------





async def _ensure_topic(settings: Settings, kwargs: Mapping[str, Any]) -> None:
    """Create the topic as the worker would (``partitions``) instead of letting the broker
    auto-create it with its own default count."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415
    from aiokafka.errors import TopicAlreadyExistsError, for_code  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=",".join(settings.brokers), **kwargs)
    await admin.start()
    try:
        if settings.topic in await admin.list_topics():
            return
        topic = NewTopic(settings.topic, settings.partitions, settings.replication_factor)
        try:
            answer = await admin.create_topics([topic])
        except TopicAlreadyExistsError:
            return
        for entry in getattr(answer, "topic_errors", ()):
            code = entry[1]
            if entry[0] == settings.topic and code not in (0, TopicAlreadyExistsError.errno):
                print(f"bucket_app: could not create topic {settings.topic} "
                      f"({for_code(code).__name__}); producing anyway", file=sys.stderr)
                return
        print(f"bucket_app: created topic {settings.topic} with {settings.partitions} "
              "partitions", file=sys.stderr)
    finally:
        await admin.close()


async def produce(settings: Settings, demo: DemoMessages, count: int, rate: float,
                  spread_s: float) -> Counter[int]:
    """Send ``count`` demo messages (0: until SIGINT/SIGTERM) at ``rate`` per second (0: as
    fast as the broker takes them); the acknowledged messages per partition."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from bucket_app.kafka.security import client_kwargs  # noqa: PLC0415

    kwargs = client_kwargs(settings)
    await _ensure_topic(settings, kwargs)
    # idempotent and acks=all: a retry after a leader change must not count a message twice
    producer = AIOKafkaProducer(bootstrap_servers=",".join(settings.brokers), acks="all",
                                enable_idempotence=True, linger_ms=5, **kwargs)
    await producer.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    acked: Counter[int] = Counter()
    # disable=None: a bar on a terminal only, never in a log file
    bar = tqdm(total=count or None, unit="msg", file=sys.stderr, disable=None,
               desc=settings.topic, dynamic_ncols=True)

    def on_ack(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            acked[future.result().partition] += 1
            bar.update(1)

    pending: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    try:
        index = 0
        while (count == 0 or index < count) and not stop.is_set():
            if rate > 0:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
            message = demo.message(index, spread_time(index, time.time(), spread_s))
            future = await producer.send(settings.topic, demo.encode(message),
                                         key=str(demo.key(index)).encode())
            future.add_done_callback(on_ack)
            pending.append(future)
            index += 1
            if index % _TRIM_EVERY == 0:
                for done in [f for f in pending if f.done()]:
                    done.result()  # a failed send stops the run with its error
                pending = [f for f in pending if not f.done()]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        bar.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    return acked


def produce_summary(topic: str, acked: Mapping[int, int]) -> str:
    parts = ", ".join(f"{p}: {n}" for p, n in sorted(acked.items()))
    return f"sent {sum(acked.values())} to topic {topic} (partitions {parts or 'none'})"


def cmd_produce(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaConnectionError, KafkaError  # noqa: PLC0415

    from bucket_app.kafka.security import raise_if_refused  # noqa: PLC0415

    try:
        settings = settings_module.load(args.settings)
        demo = DemoMessages.from_settings(settings, args.keys, args.schema_version)
    except RegistryError as exc:
        if isinstance(exc, RegistryRefused):
            return _fail(str(exc), EXIT_USAGE)
        return _fail(f"produce: {exc}", EXIT_FAILED)
    except BucketAppError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ValueError as exc:
        return _fail(f"produce: {exc}", EXIT_USAGE)
    for path in demo.missing:
        print(f"bucket_app: msg_map_schema field {path!r} is not in the Avro schema; its column "
              "will be NULL", file=sys.stderr)
    if args.spread > settings.clean_interval_s:
        print(f"bucket_app: --spread {args.spread:g} s is longer than clean_interval "
              f"({settings.clean_interval_s:g} s): the oldest messages will be skipped as "
              "expired", file=sys.stderr)
    brokers = ",".join(settings.brokers)
    # aiokafka logs each failed connection; the one line below says what went wrong instead
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        acked = asyncio.run(produce(settings, demo, args.count, args.rate, args.spread))
    except KafkaConnectionError as exc:
        try:
            asyncio.run(raise_if_refused(settings))  # a refusal names the key to fix
        except BucketAppError as refused:
            return _fail(str(refused), EXIT_USAGE)
        return _fail(f"cannot reach the Kafka brokers at {brokers}: {one_line(str(exc))}",
                     EXIT_FAILED)
    except (KafkaError, OSError) as exc:
        return _fail(f"producing to {settings.topic} on {brokers} failed: "
                     f"{type(exc).__name__}: {one_line(str(exc))}", EXIT_FAILED)
    except BucketAppError as exc:
        return _fail(str(exc), EXIT_USAGE)
    print(produce_summary(settings.topic, acked))
    return 0


# ---- query ------------------------------------------------------------------------------------


def _default_url(settings: Settings) -> str:
    host = settings.web_host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # where to connect
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}"


def _param(text: str) -> Any:
    """A --param: JSON when it parses (42, 1.5, null, "x"), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_query(args: argparse.Namespace) -> int:
    url, token = args.url, args.token or os.environ.get(TOKEN_ENV)
    if url is None:
        try:
            settings = settings_module.load(args.settings)
        except BucketAppError as exc:
            return _fail(str(exc), EXIT_USAGE)
        url, token = _default_url(settings), token or settings.http_token
    params = [_param(p) for p in args.param] if args.param else None
    try:
        answer = run_query(url, args.sql, params, token, args.timeout)
    except QueryError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except ValueError as exc:
        return _fail(f"--url {exc}", EXIT_USAGE)
    columns = answer.get("columns") or (list(answer["rows"][0]) if answer["rows"] else [])
    sys.stdout.write(render(columns, answer["rows"], args.format))
    if answer.get("truncated"):
        print(f"bucket_app: truncated at {len(answer['rows'])} rows (sql_row_limit)",
              file=sys.stderr)
    return 0


# ---- arguments --------------------------------------------------------------------------------


def _at_least(minimum: float, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, not {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--settings", type=Path, metavar="PATH",
                        help=f"the settings file (default: ${SETTINGS_ENV}, or ./settings.ini)")
    parser = argparse.ArgumentParser(
        prog=PROG, description="Check bucket_app's settings, produce demo messages, query "
                               "a running worker.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check", parents=[common], help="validate the settings and show "
                           "each effective value and its source")
    check.set_defaults(run=cmd_check)
    local = sub.add_parser("uses-local-broker", parents=[common],
                           help="exit 0 when the settings name the broker of `make kafka`")
    local.set_defaults(run=cmd_uses_local_broker)

    produce_ = sub.add_parser("produce", parents=[common], help="send demo messages the "
                              "settings count to their topic")
    produce_.add_argument("--count", type=_at_least(0, int), default=1000,
                          help="messages to send; 0 = until Ctrl-C (default 1000)")
    produce_.add_argument("--keys", type=_at_least(1, int), default=5,
                          help="distinct values of the mapped fields, so rows per bucket "
                               "(default 5)")
    produce_.add_argument("--rate", type=_at_least(0, float), default=0.0,
                          help="messages per second; 0 = as fast as possible (default)")
    produce_.add_argument("--spread", type=_at_least(0, float), default=0.0, metavar="SECONDS",
                          help="spread event times over this many seconds before now "
                               "(default 0: now)")
    produce_.add_argument("--schema-version", type=_at_least(1, int), metavar="N",
                          help="with a schema registry: write with version N of the subject "
                               "<topic>-value (default: the reader schema)")
    produce_.set_defaults(run=cmd_produce)

    query = sub.add_parser("query", parents=[common], help="run read-only SQL on a running "
                           "worker (POST /api/v1/sql)")
    query.add_argument("sql", help='one SELECT statement, e.g. \'SELECT * FROM "default"\'')
    query.add_argument("--url", help="the worker (default http://<web_host>:<web_port> of the "
                       "settings)")
    query.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV}, or the settings' "
                       "http_token)")
    query.add_argument("--format", choices=FORMATS, default="table",
                       help="output format (default table)")
    query.add_argument("-p", "--param", action="append", metavar="VALUE",
                       help="a value for the next ? in the SQL (JSON, or else text); repeat")
    query.add_argument("--timeout", type=_at_least(0.1, float), default=30.0,
                       metavar="SECONDS", help="give up after this long (default 30)")
    query.set_defaults(run=cmd_query)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bucket-app`` console script; without a command it is ``check``."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        args = build_parser().parse_args(["check", *(argv if argv is not None else sys.argv[1:])])
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
