"""Group commit: the writer's queue of staged batches, folded in groups and stored in order.

In the spirit of Tessera's ``Queue(maxAge, maxSize, flush)``: callers hand in batches and get
requests back that are answered once stored; the writer supplies what happens to a group (its
``fold``) and to the groups of one store transaction (its ``write``). Two stages overlap:

1. fold: callers queue their staged batches; one of them at a time (the one that set
   _committing) takes every queued batch (up to the limits), and the writer checks and folds it
   into its core under the writer's lock; the group then waits for the store writer;
2. store: one writer thread stores the folded groups in order, several per store
   transaction, and answers their callers once they are durable.

So the next group is checked while the previous one's store round trip is under way (a Kafka
transaction is mostly waiting on the broker). The core runs ahead of the store by at most one
stored and ``max_events`` queued events; readers only ever see the durable part. A failed store
write fails every group folded on top of it (_failures counts failures, a group remembers the
count it was folded under, its epoch), and the writer is told so it rebuilds its core from the
store before anything else is folded.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ledger.core import Receipt
from ledger.errors import StewardError, StoreUnavailableError
from ledger.formats import LogEntry
from ledger.staging import StagedBatch

# The server process's log: its lines keep the name operators and the docs know them by.
log = logging.getLogger("ledger.server")

# Per request: a receipt or the refusal of each event of its batch.
Results = list[Receipt | StewardError]


class Request:
    """One caller's batch on its way through the group commit: queued, folded, stored."""

    __slots__ = ("_answered", "after", "done", "error", "on_done", "results", "staged", "taken")

    def __init__(
        self,
        staged: StagedBatch,
        after: Request | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.staged = staged
        self.after = after  # the previous batch of the same caller: this one must follow it
        self.results: Results = []
        self.error: BaseException | None = None
        self.on_done = on_done  # called (by whichever thread finishes it) once done is set
        self.taken = False  # folded into the core by a group's leader
        self.done = False  # answered: stored (results) or failed (error)
        # Held until the request is answered: its caller waits on this request alone. One
        # condition shared by every caller woke them all at each store write: at 500 unary
        # appends/s that was 30% of the server's interpreter time (py-spy, 2026-12-07).
        self._answered = threading.Lock()
        self._answered.acquire()

    @property
    def outcome(self) -> Results | BaseException:
        return self.error if self.error is not None else self.results

    def answer(self, error: BaseException | None = None) -> None:
        """Mark it answered (its results set already, or `error`), once, waking its waiter."""
        if self.done:
            raise RuntimeError("a request is answered once")
        if error is not None:
            self.error = error
        self.done = True
        self._answered.release()

    def wait_answered(self) -> None:
        with self._answered:  # released by answer(); taken and given back, so any may wait
            pass


@dataclass(eq=False)
class Folded:
    """A group folded into the core, waiting for the store writer."""

    requests: list[Request]
    results: list[Results]
    entries: list[LogEntry]
    epoch: int  # GroupCommit._failures when it was folded

    @property
    def size(self) -> int:
        """Bytes of the entries."""
        return sum(len(e.entry_bytes) for e in self.entries)

    @property
    def weight(self) -> int:
        """What it counts for against max_events while it waits (an empty group too)."""
        return max(1, len(self.entries))


# Checks and folds a group into the writer's core (under the writer's lock): one result list
# per request, and the entries to store. Raising fails the whole group.
Fold = Callable[[list[Request]], tuple[list[Results], list[LogEntry]]]
# Stores the entries of one transaction (called without the lock) and makes them durable for
# readers; raises, storing nothing acknowledged, when they cannot be stored.
Write = Callable[[list[LogEntry]], None]


def _notify(requests: Sequence[Request]) -> None:
    """Call the on_done callbacks of finished requests (outside every lock)."""
    for request in requests:
        if request.on_done is not None:
            request.on_done()


class GroupCommit:
    """The queue between callers and the store: groups folded by callers, stored by a thread.

    `lock` is the writer's lock: folds and every change of the folded groups happen under it.
    `on_failure(error)` is called under it when a store write fails (the writer's core is then
    ahead of the store); `on_idle()` under it after each store write once nothing folded is
    left to store (the moment to rebuild from the store).
    """

    def __init__(
        self,
        lock: threading.RLock,
        *,
        fold: Fold,
        write: Write,
        on_failure: Callable[[BaseException], None],
        on_idle: Callable[[], None],
        max_events: int,
        max_bytes: int,
    ) -> None:
        self._lock = lock
        self._fold = fold
        self._write = write
        self._on_failure = on_failure
        self._on_idle = on_idle
        self._max_events = max_events  # events of one group, and folded events waiting
        self._max_bytes = max_bytes  # bytes of one group (what one request may reach alone)
        self._pending: deque[Request] = deque()
        self._pending_lock = threading.Lock()
        self._group_done = threading.Condition(self._pending_lock)
        self._committing = False
        # Folded groups waiting for the store writer, and those it is storing now: read them
        # under the lock (tests watch them to hold the pipeline at a known point).
        self.folded: deque[Folded] = deque()
        self.writing: list[Folded] = []
        self._turn = threading.Condition(self._lock)
        self._failures = 0
        self._last_failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closing = False  # close(): the writer stores what is folded, then ends

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._write_loop, name="ledger-store-writer", daemon=True
        )
        self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self, timeout: float) -> None:
        """After the last submit: the writer stores what is folded, then ends."""
        with self._lock:
            self._closing = True
            self._turn.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_turn(self) -> None:
        """Wait (holding the lock) until the store stage moves on: a group folded, taken for
        a transaction, stored or failed."""
        self._turn.wait()

    def wait_until_stored(self) -> None:
        """Wait (holding the lock) until nothing folded is left to store."""
        while self.folded or self.writing:
            self._turn.wait()

    # -- the fold stage ----------------------------------------------------------------------

    def wait(self, requests: Sequence[Request]) -> None:
        """Block until every one of `requests` is answered (stored or failed)."""
        for request in requests:
            request.wait_answered()

    def submit(
        self,
        batches: Sequence[StagedBatch],
        on_done: Callable[[], None] | None = None,
        after: Request | None = None,
    ) -> list[Request]:
        """Queue staged batches of one caller and return once they are folded (checked, in the
        core), not stored: each request is ``done`` once stored or failed, and `on_done` is called
        then. `after` is the caller's previous request, if it may still be on its way: these
        are then never stored ahead of it."""
        requests: list[Request] = []
        for staged in batches:
            requests.append(Request(staged, requests[-1] if requests else after, on_done))
        with self._pending_lock:
            self._pending.extend(requests)
        for request in requests:
            while True:
                with self._group_done:
                    while self._committing and not (request.taken or request.done):
                        self._group_done.wait()
                    if request.taken or request.done:
                        break
                    self._committing = True
                try:
                    self._fold_group(self._take_group())
                finally:
                    with self._group_done:
                        self._committing = False
                        self._group_done.notify_all()
        return requests

    def _take_group(self) -> list[Request]:
        """The queued requests of the next transaction: at least one, FIFO, within the limits
        one request may reach on its own (max_events events, max_bytes bytes)."""
        group: list[Request] = []
        failed: list[Request] = []
        events = size = 0
        with self._pending_lock:
            while self._pending:
                first = self._pending[0]
                if first.after is not None and first.after.error is not None:
                    # Its caller's previous batch failed: never store this one ahead of it.
                    self._pending.popleft()
                    first.answer(first.after.error)
                    first.after = None
                    failed.append(first)
                    continue
                head = first.staged
                if group and (
                    events + len(head.events) > self._max_events
                    or size + head.size > self._max_bytes
                ):
                    break
                request = self._pending.popleft()
                request.taken = True
                # Its predecessor is folded or failed by now, and `after` is read only while a
                # request is pending. Kept, each request would hold the one before: a stream's
                # every batch, events and all, alive until the stream ends (bench.ingest's
                # server held all 20,000 events of a stream, and the collector scanned them).
                request.after = None
                group.append(request)
                events += len(head.events)
                size += head.size
        _notify(failed)
        return group

    def _fold_group(self, group: list[Request]) -> None:
        """Have the writer check and fold `group`, then hand it to the store writer."""
        if not group:
            return
        try:
            with self._lock:
                # At most max_events folded events wait for the writer: the core stays close
                # to the store, and batches queueing meanwhile make the next group larger.
                while sum(f.weight for f in self.folded) >= self._max_events:
                    self._turn.wait()
                results, entries = self._fold(group)
                self.folded.append(Folded(group, results, entries, self._failures))
                self._turn.notify_all()
        except BaseException as exc:
            # Nothing of the group is acknowledged; a half-applied fold is the writer's to undo.
            for request in group:
                request.answer(exc)
            _notify(group)
            if not isinstance(exc, Exception):
                raise

    # -- the store stage ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Store folded groups in order, as many per transaction as the limits allow, and
        answer their callers. Runs until close(), storing what was folded before it."""
        while True:
            with self._lock:
                while not self.folded:
                    if self._closing:
                        return
                    self._turn.wait()
                take = self._take_folded()
            error = self._store(take)
            finished: list[Request] = []
            for folded in take:
                for request, results in zip(folded.requests, folded.results, strict=True):
                    if error is None:
                        request.results = results
                    request.answer(error)
                    finished.append(request)
            _notify(finished)

    def _take_folded(self) -> list[Folded]:
        """The folded groups of the next transaction (caller holds the lock): those of the same
        epoch, within max_events entries and max_bytes, at least one."""
        take = [self.folded.popleft()]
        entries, size = len(take[0].entries), take[0].size
        while self.folded:
            nxt = self.folded[0]
            if (
                nxt.epoch != take[0].epoch
                or entries + len(nxt.entries) > self._max_events
                or size + nxt.size > self._max_bytes
            ):
                break
            take.append(self.folded.popleft())
            entries += len(nxt.entries)
            size += nxt.size
        self.writing = take
        self._turn.notify_all()
        return take

    def _store(self, take: list[Folded]) -> BaseException | None:
        """Store the groups in `take`; None, or the error that kept them out of the store."""
        error: BaseException | None = None
        stale = False
        try:
            with self._lock:
                stale = take[0].epoch != self._failures
            if stale:
                # Folded on top of a group whose store write failed: its checks assumed
                # entries that were never stored.
                error = self._last_failure or StoreUnavailableError(
                    "an earlier batch could not be stored; retry"
                )
            else:
                self._write([e for g in take for e in g.entries])
        except BaseException as exc:  # every failure fails the groups; the writer lives on
            error = exc
        with self._lock:
            try:
                if error is not None and not stale:
                    self._failures += 1
                    self._last_failure = error
                    self._on_failure(error)
            finally:
                self.writing = []
                if not self.folded:
                    self._on_idle()
                self._turn.notify_all()
        return error
