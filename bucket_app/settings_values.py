"""Settings values: one key's text in, its typed value out, :class:`InvalidValue` on failure.

Each parser knows one kind of value (a duration, a topic name, host:port brokers, a URL...);
:mod:`bucket_app.settings` names the parser of each key in its table and adds the file, key and
value to the error. Checks across keys (a file that must exist, two keys that go together) are
:mod:`bucket_app.settings_checks`'.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable

from bucket_app.errors import InvalidValue

SECONDS_PER_DAY = 86_400
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_ZOOKEEPER_PORTS = frozenset({2181, 2182})
MAX_APP_ID_LEN = 200


def text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise InvalidValue("must not be empty")
    return value


def positive_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidValue("not a whole number") from None
    if value <= 0:
        raise InvalidValue("must be greater than 0")
    return value


def port(raw: str) -> int:
    value = positive_int(raw)
    if value > 65_535:
        raise InvalidValue("not a TCP port (1-65535)")
    return value


def parse_duration_s(raw: str, *, bare_unit_s: float = 60) -> float:
    """``30s``, ``10m``, ``2h``, ``7d``, ``1w``, ``250ms``; a bare number counts ``bare_unit_s``."""
    match = _DURATION_RE.match(raw)
    if not match:
        raise InvalidValue("not a duration (use e.g. 30s, 10m, 2h, 7d)")
    number, unit = float(match.group(1)), match.group(2)
    seconds = number * (_DURATION_UNITS_S[unit.lower()] if unit else bare_unit_s)
    if seconds <= 0:
        raise InvalidValue("must be longer than 0")
    return seconds


def minutes(raw: str) -> float:
    # The seed counted retention in Spark batches; a bare number here is minutes, so its own
    # example (10 and 10) keeps ten minutes of buckets instead of wiping them within seconds.
    return parse_duration_s(raw, bare_unit_s=60)


def seconds(raw: str) -> float:
    return parse_duration_s(raw, bare_unit_s=1)


def brokers(raw: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not servers:
        raise InvalidValue("must name at least one Kafka bootstrap server host:port")
    for server in servers:
        host, sep, port_text = server.rpartition(":")
        if "/" in server:
            raise InvalidValue(
                "looks like a ZooKeeper connect string; bucket_app needs Kafka bootstrap "
                "servers (host:port of the brokers, usually port 9092)"
            )
        if not sep or not host or not port_text.isdigit():
            raise InvalidValue(f"{server!r} is not host:port")
        if int(port_text) in _ZOOKEEPER_PORTS:
            raise InvalidValue(
                f"port {port_text} is ZooKeeper's; bucket_app needs Kafka bootstrap servers "
                "(the brokers' host:port, usually port 9092), not ZooKeeper"
            )
    return servers


def topic(raw: str) -> str:
    value = raw.strip()
    if not _TOPIC_RE.match(value) or value in {".", ".."}:
        raise InvalidValue("not a valid Kafka topic name (letters, digits, '.', '_', '-')")
    return value


def app_id(raw: str) -> str:
    # The changelog topic is <app_id>-<fingerprint>-counts-changelog (bucket_app.identity),
    # and Kafka's topic names stop at 249 characters.
    value = topic(raw)
    if len(value) > MAX_APP_ID_LEN:
        raise InvalidValue(f"longer than {MAX_APP_ID_LEN} characters (topic names derive from it)")
    return value


def choice(*options: str) -> Callable[[str], str]:
    """A parser accepting ``options`` in any case; the value comes back in their case."""
    by_folded = {option.casefold(): option for option in options}

    def parse(raw: str) -> str:
        value = by_folded.get(raw.strip().casefold())
        if value is None:
            raise InvalidValue(f"must be one of {', '.join(options)}")
        return value

    return parse


def bucket_interval(raw: str) -> int:
    value = positive_int(raw)
    if SECONDS_PER_DAY % value:
        raise InvalidValue(f"must divide the {SECONDS_PER_DAY} seconds of a day evenly")
    return value


def host(raw: str) -> str:
    return text(raw)


def optional_path(raw: str) -> str | None:
    value = raw.strip()
    return None if value.lower() in {"", "none", "null"} else value


def optional_text(raw: str) -> str | None:
    value = raw.strip()
    return None if value.lower() in {"", "none", "null"} else value


def optional_url(raw: str) -> str | None:
    value = optional_text(raw)
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidValue("not an http:// or https:// URL")
    if parts.username or parts.password:
        raise InvalidValue("must not hold credentials; use schema_registry_username and "
                       "schema_registry_password")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise InvalidValue("its port is not a number") from None
    return value.rstrip("/")


def optional_topic(raw: str) -> str | None:
    value = optional_text(raw)
    return None if value is None else topic(value)


def optional_seconds(raw: str) -> float | None:
    value = raw.strip()
    if value.lower() in {"", "none", "null", "off", "0"}:
        return None
    return parse_duration_s(value, bare_unit_s=1)


#: idle_close = auto: this many bucket intervals
IDLE_CLOSE_INTERVALS = 3
AUTO = "auto"


def idle_close(raw: str) -> float | str | None:
    return AUTO if raw.strip().lower() == AUTO else optional_seconds(raw)


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"true", "yes", "on", "1"}:
        return True
    if value in {"false", "no", "off", "0"}:
        return False
    raise InvalidValue("must be true or false")


def sqlite_db(raw: str) -> str:
    return text(raw)


def sqlite_table(raw: str) -> str:
    value = text(raw)
    if "\x00" in value:
        raise InvalidValue("must not contain NUL")
    return value
