"""Faust's windowed Table without Faust's window expiry.

faust-streaming 0.15.3's window expiry runs on wall-clock time, forgets windows restored after a
restart (https://github.com/faust-streaming/faust/issues/385, open), writes no tombstones and
keeps a heap entry per update; and its compiled TumblingWindow reports ``expires == 0.0`` rather
than None, so a table that sets no ``expires`` still expires (``Collection._should_expire_keys``
only asks ``expires is None``) and gets a changelog with ``cleanup.policy=compact,delete`` and the
broker's default retention (``Table.using_window`` sets ``_changelog_deleting``). Apps that do
their own retention, with tombstones, use :class:`UnexpiringTable`.

Can go when Faust's expiry runs on event time, survives recovery and writes tombstones (#385),
and a window without ``expires`` reports None: then ``expires=None`` on the table is enough.
"""

from __future__ import annotations

from typing import Any

import faust


class UnexpiringTable(faust.Table):
    """A Faust Table whose windows never expire in Faust and whose changelog is compact-only."""

    def _should_expire_keys(self) -> bool:
        return False

    def using_window(self, window: Any, *, key_index: bool = False) -> Any:
        wrapper = super().using_window(window, key_index=key_index)
        self._changelog_deleting = False
        return wrapper
