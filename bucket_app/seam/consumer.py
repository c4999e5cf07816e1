"""Faust's Kafka consumer, bent for one app: subclasses Faust lets the app choose, no patching.

:class:`SeamTransport` (chosen by :class:`~bucket_app.seam.app.SeamApp`) makes
:class:`SeamConsumer`, whose thread is a :class:`SeamConsumerThread`. What they change, only for
the app that chose them and only when it sets :class:`ConsumerOptions`:

- the committed-offset seek also re-reads source partitions without a committed offset;
- the aiokafka consumer's fetch sizes and isolation level, and its fetcher hands over the
  source topic's records a record batch at a time (:mod:`bucket_app.seam.fetch`), with the
  positions reached past the last record (transaction markers, aborted records);
- the fetch loop is the app's (``bucket_app.kafka.intake.BatchIntake.drain``) instead of Faust's.

:class:`SeamConsumer` also gives the intake small methods over the consumer state Faust keeps
in private attributes (read offsets, acknowledgements, gaps, unacknowledged messages), one call
per fetched batch, so no module outside the seam names them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import Token
from typing import Any

from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message
from mode.utils.futures import notify

from bucket_app.seam import fetch
from bucket_app.seam.runs import Runs
from bucket_app.seam.thread import ConsumerOptions, SeamConsumerThread, options_of

log = logging.getLogger(__name__)

__all__ = ["ConsumerOptions", "SeamConsumer", "SeamConsumerThread", "SeamTransport",
           "options_of", "reset_current_event", "set_current_event"]

#: how long a stopping worker waits for its counted batches' changelog acknowledgements and its
#: last commit, all waits together (SIGTERM must exit within 10 s, brokers reachable or not)
STOP_WAIT_S = 4.0


class SeamConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with an app-chosen fetch loop and the intake's accessors."""

    #: replaces Faust's fetch loop when set (see :meth:`use_drain`)
    drain: Callable[[Any], Awaitable[None]] | None = None
    #: source partitions' fetch positions past their last record (set by the thread)
    positions: fetch.Positions | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: per partition, the offset the group's commit holds (the next to read), as the
        #: brokers confirmed it: Faust's ``_committed_offset`` also takes a failed commit's
        self.durable: dict[TP, int] = {}
        #: per source partition, the last offset counted, and the last whose changelog
        #: records the brokers acknowledged (the intake's set_read_offset and ack_offsets)
        self.counted: dict[TP, int] = {}
        self.acked_through: dict[TP, int] = {}
        #: per partition, acknowledged offsets that Faust's ``_acked`` does not hold: a batch
        #: acknowledged without a hole is one run here, not an int per offset in ``_acked`` and
        #: ``_acked_index``; anything else (a gap to record, an overlap, Faust's own ``ack``)
        #: moves the runs into Faust's structures first, which stay the definition
        self._runs: dict[TP, Runs] = {}
        self._stop_deadline: float | None = None
        self._told_unacked = False

    async def seek_to_committed(self) -> Any:
        committed = await super().seek_to_committed()
        self.durable.update({TP(tp.topic, tp.partition): offset
                             for tp, offset in committed.items() if offset is not None})
        return committed

    async def _commit(self, offsets: Any) -> bool:
        done = bool(await super()._commit(offsets))
        if done:
            self.durable.update({TP(tp.topic, tp.partition): offset
                                 for tp, offset in offsets.items()})
        return done

    async def wait_empty(self) -> None:
        """Faust's wait for the messages in flight to be acknowledged, bounded while the app
        stops: with the brokers unreachable a counted batch's changelog records are never
        acknowledged, and Faust waited for them (and for its commit's producer flush) for
        ever. What it gives up on is neither committed nor lost: the next worker reads it
        again (:meth:`say_uncommitted` says what). In a rebalance it is not bounded: a
        partition is given up only once its counted batches are in the changelog."""
        if not self.app.should_stop:
            await super().wait_empty()
            return
        # Not Faust's loop under a timeout: it swallows the cancellation (_wait_for_ack).
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + STOP_WAIT_S
        deadline = self._stop_deadline
        while self._unacked_messages and time.monotonic() < deadline:
            self._clean_unacked_messages()
            if self._unacked_messages:
                await asyncio.sleep(0.05)
        if self._unacked_messages and not self._told_unacked:
            self._told_unacked = True
            log.warning("bucket_app: stopping without the changelog acknowledgements of %d "
                        "counted batches (brokers unreachable?)", len(self._unacked_messages))
        # Faust's last commit, as its wait_empty ends it, within what is left
        commit = asyncio.ensure_future(self.commit_and_end_transactions())
        done, _ = await asyncio.wait({commit}, timeout=max(0.1, deadline - time.monotonic()))
        if not done:
            commit.cancel()

    async def on_stop(self) -> None:
        """Faust's last commit; then, if it could not commit everything counted (the brokers
        unreachable, say), one line saying what, per source partition."""
        try:
            await super().on_stop()
        finally:
            self.say_uncommitted()

    def uncommitted(self) -> dict[int, tuple[int, int | None, int | None]]:
        """Source partitions counted past their committed offset: partition -> (the last
        offset counted, the last whose changelog records the brokers acknowledged, the last
        committed; None for none)."""
        try:
            assigned = set(self.assignment())
        except Exception:  # noqa: BLE001 - the consumer may be gone by now
            assigned = set()
        left = {}
        for tp, counted in list(self.counted.items()):
            if assigned and tp not in assigned:
                continue  # revoked: its next owner commits it
            committed = self.durable.get(tp)  # the next offset to read
            if committed is None or counted >= committed:
                left[tp.partition] = (counted, self.acked_through.get(tp),
                                      None if committed is None else committed - 1)
        return left

    def say_uncommitted(self) -> None:
        left = self.uncommitted()
        if not left:
            return

        def offset(value: int | None) -> str:
            return "none" if value is None else str(value)

        log.warning(
            "bucket_app: stopping with source offsets counted but not committed (the brokers "
            "did not take the commit): %s; the next worker reads them again from the "
            "committed offset and counts only what the changelog does not hold", "; ".join(
                f"partition {p} counted through {counted} ("
                + ("no changelog write acknowledged since start" if acked is None else
                   f"its changelog acknowledged through {acked}")
                + f"), committed through {offset(committed)}"
                for p, (counted, acked, committed) in sorted(left.items())))

    def _new_consumer_thread(self) -> SeamConsumerThread:
        return SeamConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def use_drain(self, drain: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``drain(fetcher)`` as this consumer's fetch loop instead of Faust's
        ``Consumer._drain_messages``."""
        self.drain = drain

    async def _drain_messages(self, fetcher: Any) -> None:
        if self.drain is None:
            await super()._drain_messages(fetcher)
        else:
            await self.drain(fetcher)

    # --- the fetch loop -------------------------------------------------------------------

    def loop_stopped(self, fetcher: Any) -> bool:
        """Whether Faust's fetch loop would stop: this consumer or its Fetcher is stopping."""
        return self._stopped.is_set() or fetcher._stopped.is_set()  # type: ignore[no-any-return]

    async def next_records(self, timeout_s: float) -> Any:
        """The next fetch, as Faust's fetch loop waits for it: ``(records by TP, active)``."""
        return await self._wait_next_records(timeout_s)

    def take_positions(self) -> dict[TP, int]:
        """Source partitions whose fetches since the last call reached past their last record
        (transaction markers, aborted records), with the position reached."""
        return {} if self.positions is None else fetch.take_positions(self.positions)

    def active_partitions(self) -> set[TP]:
        """Partitions assigned and not paused (Faust's fetch set)."""
        return self._get_active_partitions()

    def buffered_partitions(self) -> set[TP]:
        return self._buffered_partitions

    def paused_partitions(self) -> set[TP]:
        return self._paused_partitions

    async def commit_if_due(self) -> None:
        """Commit once ``broker_commit_every`` offsets were acknowledged, as Faust's loop does."""
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    # --- read offsets and unacknowledged messages ----------------------------------------

    def read_offset(self, tp: TP) -> int | None:
        """The last offset read of ``tp`` (None before any); Faust drops records below it."""
        return self._read_offset[tp]  # type: ignore[no-any-return]

    def set_read_offset(self, tp: TP, offset: int) -> None:
        """``tp`` is counted through ``offset``."""
        self._read_offset[tp] = offset
        self.counted[TP(tp.topic, tp.partition)] = offset

    def to_message(self, tp: TP, record: Any) -> Message:
        """Faust's message for an aiokafka ConsumerRecord of ``tp``."""
        return self._to_message(tp, record)

    def hold(self, message: Message) -> None:
        """Keep ``message`` in Faust's unacknowledged set: Faust waits for it before it gives
        partitions up in a rebalance."""
        self._unacked_messages.add(message)

    def release(self, message: Message) -> None:
        """Take ``message`` out of the unacknowledged set and wake whoever waits for it."""
        message.acked = True
        self._unacked_messages.discard(message)
        notify(self._waiting_for_ack)

    # --- acknowledgement ----------------------------------------------------------------

    def ack_offsets(self, tp: TP, offsets: Sequence[int], previous: int | None) -> None:
        """Acknowledge ``offsets`` (ascending) as Faust's ``Consumer.ack`` would, one offset at
        a time.

        ``previous`` is the read offset before them: offsets between it and the first one, or
        between two of them, never arrived (transaction markers, compaction) and are recorded
        as gaps, or Faust would never commit past them.
        """
        key = TP(tp.topic, tp.partition)
        self.acked_through[key] = max(offsets[-1], self.acked_through.get(key, -1))
        committed = self._committed_offset[tp]
        if committed is not None and offsets[0] < committed:
            offsets = [offset for offset in offsets if offset >= committed]
            if not offsets:
                return
        # _acked[tp] also marks tp as having acknowledgements to commit (Faust lists its keys)
        if _no_hole(offsets, previous) and not self._acked[tp] and not self._gap[tp]:
            runs = self._runs.setdefault(tp, Runs())
            if runs.add(offsets[0], offsets[-1]):
                self._n_acked += len(offsets)
                return
        self._unrun(tp)
        index = self._acked_index[tp]
        if index and not index.isdisjoint(offsets):
            offsets = [offset for offset in offsets if offset not in index]
        if not offsets:
            return
        if _no_hole(offsets, previous):  # no gap to record
            self._acked_now(tp, offsets)
            return
        gaps = self._gap[tp]
        added_gap = False
        for offset in offsets:
            if previous and offset - previous > 1:
                start = previous + 1 if committed is None else max(previous + 1, committed + 1)
                if start < offset:
                    gaps.addi(start, offset)
                    added_gap = True
            previous = offset
        if added_gap:
            gaps.merge_overlaps()
        self._acked_now(tp, offsets)

    def _acked_now(self, tp: TP, offsets: Sequence[int]) -> None:
        self._acked[tp].extend(offsets)
        self._acked_index[tp].update(offsets)
        self._n_acked += len(offsets)

    def _unrun(self, tp: TP) -> None:
        """Move ``tp``'s runs into Faust's ``_acked`` and ``_acked_index``."""
        runs = self._runs.pop(tp, None)
        if runs:
            acked, index = self._acked[tp], self._acked_index[tp]
            for span in runs.offsets():
                acked.extend(span)
                index.update(span)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)  # Faust drops their _acked and _gap
        for tp in revoked:
            self._runs.pop(tp, None)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's ``Consumer._new_offset`` (the offset to commit: one past the first run of
        consecutive acknowledged offsets), without a Python step per offset when no gap is
        recorded.

        Faust finds the run with ``consecutive_numbers``, a ``groupby`` with a Python key per
        offset: at every commit, every offset acknowledged since the last (a fetch's records
        are acknowledged one offset each), which cost as much as counting them with the kernel.
        The acknowledged offsets are unique (``ack_offsets`` and Faust's ``ack`` skip those in
        the index), so once sorted ``acked[i] - i`` never decreases, and the run is the prefix
        where it equals ``acked[0]``: a bisection. With gaps recorded, Faust's own method.
        Runs (:class:`~bucket_app.seam.runs.Runs`) are kept only while Faust's structures hold
        nothing for ``tp``; then the first run is the answer.
        """
        runs = self._runs.get(tp)
        if runs:
            if self._acked[tp] or self._gap[tp]:  # Faust's own ack added some: one structure
                self._unrun(tp)
            else:
                first, last = runs.head()
                committed = self._committed_offset[tp]
                if committed and first - committed > 1:  # as Faust: a gap at the head
                    return None
                runs.drop_head()
                return last + 1
        acked = self._acked[tp]
        index = self._acked_index[tp]
        if not acked or self._gap[tp] or len(index) != len(acked):  # not unique: Faust's
            return super()._new_offset(tp)  # type: ignore[no-any-return]
        acked.sort()
        committed = self._committed_offset[tp]
        first = acked[0]
        if committed and first - committed > 1:  # as Faust: a gap at the head, nothing new
            return None
        if acked[-1] - first == len(acked) - 1:
            run = len(acked)
        else:
            run = bisect_right(range(len(acked)), first, key=lambda i: acked[i] - i)
        del acked[:run]
        if acked:
            index.difference_update(range(first, first + run))
        else:
            index.clear()
        return first + run

    # --- records of other topics: Faust's own path ----------------------------------------

    async def deliver(self, tp: TP, records: Iterable[Any], generation: int) -> bool:
        """Faust's own per-message path (``_drain_messages``'s inner loop) for ``records`` of
        ``tp``; False as soon as the flow stops or the generation changes, as Faust's
        ``getmany`` does."""
        app = self.app
        read_offsets = self._read_offset
        for record in records:
            if not self.flow_active or app.consumer_generation_id != generation:
                return False
            offset = record.offset
            read = read_offsets[tp]
            if read is None or offset >= read:
                if read and offset - read > 1 and app.topics.acks_enabled_for(tp.topic):
                    await self._add_gap(tp, read + 1, offset)
                await self.wait_first(
                    self.callback(self._to_message(tp, record)),
                    self.suspend_flow.wait(),
                )
                read_offsets[tp] = offset
        return True


class SeamTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, making :class:`SeamConsumer`\\ s (Transport.Consumer is
    Faust's extension point for this)."""

    Consumer = SeamConsumer


def _no_hole(offsets: Sequence[int], previous: int | None) -> bool:
    """Whether ascending, unique ``offsets`` follow ``previous`` (the read offset before them;
    None or 0: unknown, as Faust reads it) and each other without a hole."""
    return offsets[-1] - offsets[0] == len(offsets) - 1 and (
        not previous or offsets[0] - previous <= 1)


def set_current_event(event: EventT) -> Token[Any]:
    """Make ``event`` Faust's current event (Faust routes table writes by its partition);
    undo with :func:`reset_current_event`."""
    return _current_event.set(weakref.ref(event))


def reset_current_event(token: Token[Any]) -> None:
    _current_event.reset(token)
