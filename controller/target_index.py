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
from collections.abc import Iterator, Mapping

from controller.state import ControllerState
from ledger.formats import LogEntry, RolloutStep, Target
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
        # Per target, the proposal of its latest step: noted as steps are folded (`note`), or
        # found once in the history (latest_of) for a target none was noted for.
        self._latest: dict[Target, bytes] = {}

    def update(self, state: ControllerState, limit: int | None = None) -> bool:
        """Index up to `limit` proposals added since the last call (all with None); True when
        every proposal of `state` is indexed. A new state object (a replay that replaced the
        state) starts the index over."""
        if state is not self._state:
            self._state, self._seen, self._stepped_seen = state, 0, 0
            self._hashes, self._seqs = {}, {}
            self._stepped, self._stepped_seqs = {}, {}
            self._latest = {}
        proposals = state.ledger.proposals
        total = len(proposals)
        budget = 1 << 62 if limit is None else limit
        if self._seen < total:
            stop = min(total, self._seen + budget)
            for p in itertools.islice(proposals.values(), self._seen, stop):
                _insert(self._hashes, self._seqs, _target(p), p.entry_hash, p.seq)
            budget -= stop - self._seen
            self._seen = stop
            if stop < total:
                return False
        # Rollout records are only ever added (a restart builds a new state), each once.
        records = state.rollouts
        if len(records) < self._stepped_seen:
            self._stepped_seen = 0
            self._stepped, self._stepped_seqs = {}, {}
        stop = min(len(records), self._stepped_seen + budget)
        for h in itertools.islice(records, self._stepped_seen, stop):
            p = proposals[h]
            _insert(self._stepped, self._stepped_seqs, _target(p), h, p.seq)
        budget -= stop - self._stepped_seen
        self._stepped_seen = stop
        if stop < len(records):
            return False
        # Each target's latest step, found in the history a few targets per call (a sort of
        # its proposals with steps; then `note` keeps it).
        for target, hashes in self._stepped.items():
            if target in self._latest:
                continue
            if budget <= 0:
                return False
            found = latest_of([proposals[h] for h in hashes], state.last_seq)
            if found is not None:
                self._latest[target] = found.entry_hash
            budget -= len(hashes)
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

    def note(self, state: ControllerState, entry: LogEntry) -> None:
        """An entry was just folded into `state` (call with the fold lock held): a step is the
        latest of its target, since entries are folded in seq order."""
        payload = entry.body.payload
        if state is not self._state or not isinstance(payload, RolloutStep):
            return  # another state's index starts over, from its history, when updated
        p = state.ledger.proposals.get(payload.proposal)
        if p is not None:
            self._latest[_target(p)] = payload.proposal

    def latest_step(self, state: ControllerState, target: Target) -> ProposalState | None:
        """The proposal whose last step is `target`'s latest, or None (index current)."""
        h = self._latest.get(target)
        if h is None:
            stepped = [state.ledger.proposals[x] for x in self.stepped(target)]
            found = latest_of(stepped, state.last_seq)
            if found is None:
                return None
            h = self._latest[target] = found.entry_hash
        return state.ledger.proposals[h]

    def stepped(self, target: Target) -> list[bytes]:
        """The proposals naming `target` that have steps (a rollout record), oldest first."""
        return self._stepped.get(target, [])

    def __iter__(self) -> Iterator[Target]:
        return iter(self._hashes)


def latest_of(stepped: list[ProposalState], last_seq: Mapping[bytes, int]) -> ProposalState | None:
    """The proposal whose last step is the latest (each entry names one proposal, so there is
    one), reading the steps of as few as it can: the seq of the last entry naming a proposal
    (`last_seq`) bounds its last step's, so they are tried from the latest named down, until
    the next cannot beat the best found. After a restart each try decodes evidence."""
    unknown = 1 << 62  # a proposal last_seq does not know: tried first, never skipped
    best: ProposalState | None = None
    best_seq = -1
    for p in sorted(stepped, key=lambda p: last_seq.get(p.entry_hash, unknown), reverse=True):
        if last_seq.get(p.entry_hash, unknown) < best_seq:
            break
        seq = p.steps[-1].seq
        if seq > best_seq:
            best, best_seq = p, seq
    return best


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
