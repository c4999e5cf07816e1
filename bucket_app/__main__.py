"""``python -m bucket_app check | uses-local-broker``: settings checks for the Makefile.

``check`` validates the settings file and prints one line; ``uses-local-broker`` exits 0 when
the settings point at the broker ``make kafka`` starts (127.0.0.1:9092 or localhost:9092).
"""

from __future__ import annotations

import sys

from bucket_app import settings as settings_module
from bucket_app.errors import SettingsError

LOCAL_BROKERS = frozenset({"127.0.0.1:9092", "localhost:9092"})


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    try:
        settings = settings_module.load()
    except SettingsError as exc:
        print(f"bucket_app: {exc}", file=sys.stderr)
        return 2
    if command == "check":
        print(f"bucket_app: {settings.source} is valid; topic {settings.topic} "
              f"on {','.join(settings.brokers)}")
        return 0
    if command == "uses-local-broker":
        return 0 if set(settings.brokers) <= LOCAL_BROKERS else 1
    print(f"bucket_app: unknown command {command!r} (check, uses-local-broker)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
