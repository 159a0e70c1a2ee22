"""Which proposals name which target, kept up to date as proposals arrive, in bounded steps.

Every reconcile grouped every proposal of the ledger by target, under the fold lock, before it
planned (controller.planner): at a million entries (55,918 proposals) that and the views took
0.9-1.0 s per reconcile, and the fold of a kill switch waited behind it. A proposal's target
never changes once it is submitted and proposals never leave the state, so the grouping can
be kept: `TargetIndex.update` looks only at the proposals added since its last call (a dict
keeps insertion order), at most `limit` of them per call, so that the runtime can release the
fold lock between two calls; the first call after a restart reads each restored proposal's
target (decoding it) a bounded number at a time.

It also keeps, per target, the proposals that have steps (a rollout record in
``ControllerState.rollouts``: the rules make STARTED a proposal's first step, and its fold
creates the record): the planner finds the active rollout, the last promotion and the owner of
a canary among them, not among every proposal of the target.

Pure: no I/O, no lock of its own (callers hold the fold lock around each call).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from controller.state import ControllerState
from ledger.formats import Target
from ledger.state import ProposalState


class TargetIndex:
    """Proposal hashes per target, each list in seq order, for one ControllerState."""

    def __init__(self) -> None:
        self._state: ControllerState | None = None
        self._seen = 0  # proposals of the state's dict looked at, in its order
        self._hashes: dict[Target, list[bytes]] = {}
        self._seqs: dict[Target, list[int]] = {}
        self._stepped_seen = 0  # rollout records looked at, in the dict's order
        self._stepped: dict[Target, list[bytes]] = {}
        self._stepped_seqs: dict[Target, list[int]] = {}

    def update(self, state: ControllerState, limit: int | None = None) -> bool:
        """Index up to `limit` proposals added since the last call (all with None); True when
        every proposal of `state` is indexed. A new state object (a replay that replaced the
        state) starts the index over."""
        if state is not self._state:
            self._state, self._seen, self._stepped_seen = state, 0, 0
            self._hashes, self._seqs = {}, {}
            self._stepped, self._stepped_seqs = {}, {}
        proposals = state.ledger.proposals
        total = len(proposals)
        if self._seen < total:
            stop = total if limit is None else min(total, self._seen + limit)
            for p in itertools.islice(proposals.values(), self._seen, stop):
                _insert(self._hashes, self._seqs, _target(p), p.entry_hash, p.seq)
            self._seen = stop
            if stop < total:
                return False
        # Rollout records are only ever added (a restart builds a new state), each once.
        records = state.rollouts
        if len(records) < self._stepped_seen:
            self._stepped_seen = 0
            self._stepped, self._stepped_seqs = {}, {}
        for h in itertools.islice(records, self._stepped_seen, None):
            p = proposals[h]
            _insert(self._stepped, self._stepped_seqs, _target(p), h, p.seq)
        self._stepped_seen = len(records)
        return True

    def current(self, state: ControllerState) -> bool:
        """Whether every proposal of `state` is indexed."""
        return (
            state is self._state
            and self._seen == len(state.ledger.proposals)
            and self._stepped_seen == len(state.rollouts)
        )

    def targets(self) -> set[Target]:
        return set(self._hashes)

    def hashes(self, target: Target) -> list[bytes]:
        """The proposals naming `target`, oldest first (empty when none does)."""
        return self._hashes.get(target, [])

    def stepped(self, target: Target) -> list[bytes]:
        """The proposals naming `target` that have steps (a rollout record), oldest first."""
        return self._stepped.get(target, [])

    def __iter__(self) -> Iterator[Target]:
        return iter(self._hashes)


def _target(p: ProposalState) -> Target:
    """A proposal's target; a restored one (controller.snapshot_restore) knows it from its
    part's columns, without decoding its evidence (5 s for every proposal at ten million)."""
    known = getattr(type(p), "known_target", None)
    return p.proposal.target if known is None else known(p)


def _insert(
    hashes: dict[Target, list[bytes]],
    seqs: dict[Target, list[int]],
    target: Target,
    h: bytes,
    seq: int,
) -> None:
    """Add `h` to `target`'s list, kept in seq order."""
    in_order, seq_list = hashes.setdefault(target, []), seqs.setdefault(target, [])
    if not seq_list or seq > seq_list[-1]:  # the usual case: they arrive in seq order
        in_order.append(h)
        seq_list.append(seq)
    else:
        at = bisect.bisect_right(seq_list, seq)
        in_order.insert(at, h)
        seq_list.insert(at, seq)


__all__ = ["TargetIndex"]
