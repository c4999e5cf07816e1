"""bucket_app: tumbling-window counts of Kafka messages, kept in RocksDB, queried over HTTP.

``faust -A bucket_app worker`` reads ``bucket_app.app``. The app is built on first access, not
at import, so the pure modules (settings, codecs, buckets, sql) import without a settings file
or a broker. A bad setting or an unreachable broker stops start-up with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "load_app"]

_app: Any = None


def load_app() -> Any:
    """Build (once) the Faust app from the settings file named by BUCKET_APP_SETTINGS."""
    global _app
    if _app is None:
        from bucket_app import settings as settings_module
        from bucket_app.errors import BucketAppError
        from bucket_app.worker import create_app

        try:
            _app = create_app(settings_module.load())
        except BucketAppError as exc:
            print(f"bucket_app: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return _app


def __getattr__(name: str) -> Any:
    if name == "app":
        return load_app()
    raise AttributeError(f"module 'bucket_app' has no attribute {name!r}")
