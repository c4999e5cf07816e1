"""The worker's local state across restarts: which state it counts under, and whether the
RocksDB tables an earlier worker left on this data_dir can be kept.
"""

from __future__ import annotations

import atexit
import shutil
import sys
from pathlib import Path

from bucket_app import identity
from bucket_app.identity import COUNTS_TABLE
from bucket_app.settings import Settings

#: What the unclean-stop marker says of the tables of a worker that writes RocksDB only after
#: the changelog (bucket_app.kafka.changelog). A marker without it was left by an earlier
#: version, whose tables can hold increments the changelog never got.
TABLES_AFTER_CHANGELOG = "tables written after the changelog (store v2)"


def guard_local_state(settings: Settings, tabledir: Path) -> None:
    """Say which state this worker counts under, and keep its local RocksDB tables unless an
    earlier version of bucket_app left them after an unclean stop.

    A worker writes RocksDB only after the brokers acknowledged the changelog records of the
    same writes, with the changelog offset they reach (:mod:`bucket_app.kafka.changelog`), so
    its tables are a prefix of the changelog even after SIGKILL, and Faust's recovery reads
    only the tail past that offset. Versions before that wrote RocksDB first: after their
    unclean stop the local store can hold increments the changelog never got, and such a worker
    would never send them (it skips the replayed events as already counted), so those tables
    are wiped and rebuilt from the changelog, once.

    Local tables, marker and changelog all belong to one state (:mod:`bucket_app.identity`):
    a worker whose bound settings changed counts under another state, in another ``tabledir``,
    and leaves the old one as it was. ``<data_dir>/tables-owner`` names the state the last
    worker on this data_dir counted under, so the start-up line can say what changed.
    """
    marker = identity.running_marker(settings)
    owner = settings.data_dir / identity.OWNER_FILE
    owned_by = owner.read_text() if owner.exists() else None
    # Faust has not set up logging yet at this point of start-up: say it on stderr.
    print("bucket_app: " + identity.startup_line(settings, owned_by, COUNTS_TABLE),
          file=sys.stderr, flush=True)
    if marker.exists() and tabledir.exists():
        state = identity.state_id(settings)
        if TABLES_AFTER_CHANGELOG in marker.read_text():
            print(f"bucket_app: the previous worker of state {state} on {settings.data_dir} "
                  "did not stop cleanly; its tables hold only what the changelog holds, so "
                  "recovery reads the changelog from where they stop", file=sys.stderr,
                  flush=True)
        else:
            print(f"bucket_app: the previous worker of state {state} on {settings.data_dir} "
                  "did not stop cleanly and was an earlier version; rebuilding its tables "
                  "from the changelog", file=sys.stderr, flush=True)
            shutil.rmtree(tabledir)
    # Faust creates the tabledir itself, but not its parents.
    tabledir.parent.mkdir(parents=True, exist_ok=True)
    owner.write_text(identity.owner_record(settings))
    marker.write_text(f"a worker is running or did not stop cleanly; {TABLES_AFTER_CHANGELOG}\n")

    def clean_exit() -> None:
        marker.unlink(missing_ok=True)

    atexit.register(clean_exit)
