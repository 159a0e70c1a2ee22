"""Which proposals name which target, kept up to date as proposals arrive, in bounded steps.

Every reconcile grouped every proposal of the ledger by target, under the fold lock, before it
planned (controller.planner): at a million entries (55,918 proposals) that and the views took
0.9-1.0 s per reconcile, and the fold of a kill switch waited behind it. A proposal's target
never changes once it is submitted and proposals never leave the state, so the grouping can
be kept: `TargetIndex.update` looks only at the proposals added since its last call (a dict
keeps insertion order), at most `limit` of them per call, so that the runtime can release the
fold lock between two calls; the first call after a restart reads each restored proposal's
target (decoding it) a bounded number at a time.

Pure: no I/O, no lock of its own (callers hold the fold lock around each call).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from controller.state import ControllerState
from ledger.formats import Target


class TargetIndex:
    """Proposal hashes per target, each list in seq order, for one ControllerState."""

    def __init__(self) -> None:
        self._state: ControllerState | None = None
        self._seen = 0  # proposals of the state's dict looked at, in its order
        self._hashes: dict[Target, list[bytes]] = {}
        self._seqs: dict[Target, list[int]] = {}

    def update(self, state: ControllerState, limit: int | None = None) -> bool:
        """Index up to `limit` proposals added since the last call (all with None); True when
        every proposal of `state` is indexed. A new state object (a replay that replaced the
        state) starts the index over."""
        if state is not self._state:
            self._state, self._seen = state, 0
            self._hashes, self._seqs = {}, {}
        proposals = state.ledger.proposals
        total = len(proposals)
        if self._seen == total:
            return True
        stop = total if limit is None else min(total, self._seen + limit)
        for p in itertools.islice(proposals.values(), self._seen, stop):
            target = p.proposal.target
            hashes = self._hashes.setdefault(target, [])
            seqs = self._seqs.setdefault(target, [])
            if not seqs or p.seq > seqs[-1]:  # the usual case: proposals arrive in seq order
                hashes.append(p.entry_hash)
                seqs.append(p.seq)
            else:
                at = bisect.bisect_right(seqs, p.seq)
                hashes.insert(at, p.entry_hash)
                seqs.insert(at, p.seq)
        self._seen = stop
        return stop == total

    def current(self, state: ControllerState) -> bool:
        """Whether every proposal of `state` is indexed."""
        return state is self._state and self._seen == len(state.ledger.proposals)

    def targets(self) -> set[Target]:
        return set(self._hashes)

    def hashes(self, target: Target) -> list[bytes]:
        """The proposals naming `target`, oldest first (empty when none does)."""
        return self._hashes.get(target, [])

    def __iter__(self) -> Iterator[Target]:
        return iter(self._hashes)


__all__ = ["TargetIndex"]
