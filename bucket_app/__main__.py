"""``python -m bucket_app``: the ``bucket-app`` command line (:mod:`bucket_app.cli`).

The Makefile runs ``python -m bucket_app uses-local-broker`` (exit 0 when the settings point at
the broker ``make kafka`` starts); without a command it is ``check``.
"""

from __future__ import annotations

import sys

from bucket_app.cli import LOCAL_BROKERS, main

__all__ = ["LOCAL_BROKERS", "main"]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
