"""What a reconcile does under the fold lock grows with live work, not with the ledger: the
target index kept up to date in bounded steps, views built a chunk per hold, restored proposals
decoded a window at a time. Each piece is held to the plain computation it replaces."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import controller.snapshot_restore as snapshot_restore
from controller.planner import ObservedTarget, plan
from controller.replay import Replayer, SnapshotStore
from controller.snapshot import _PROPOSAL_LAZY
from controller.snapshot_restore import ColumnProposal
from controller.state import ControllerState
from controller.target_index import TargetIndex
from controller.view import rollout_views, views_in_chunks
from ledger.formats import Target
from ledger.store.sqlite import SQLiteLogStore
from tests.unit.test_controller_snapshot_parts import fold, longer_harness, write_log
from tests.unit.test_planner import V1, ready


def grouped(state: ControllerState, *, stepped: bool = False) -> dict[Target, list[bytes]]:
    """The plain computation: every proposal (with steps), by target, in seq order."""
    out: dict[Target, list[bytes]] = {}
    for p in sorted(state.ledger.proposals.values(), key=lambda p: p.seq):
        if p.steps or not stepped:
            out.setdefault(p.proposal.target, []).append(p.entry_hash)
    return out


def stepped_of(index: TargetIndex) -> dict[Target, list[bytes]]:
    return {t: index.stepped(t) for t in index if index.stepped(t)}


def test_the_target_index_groups_as_a_pass_over_every_proposal_does() -> None:
    h, _ = longer_harness()
    state = fold(h.core.entries or [])
    index = TargetIndex()
    steps = 0
    while not index.update(state, limit=1):  # one proposal, rollout record or target per call
        steps += 1
    assert steps >= len(state.ledger.proposals) + len(state.rollouts) - 1
    assert index.current(state)
    assert {t: index.hashes(t) for t in index} == grouped(state)
    assert stepped_of(index) == grouped(state, stepped=True) != {}
    assert len(index.targets()) >= 3
    # New proposals are picked up, and only they are looked at.
    size = h.core.size
    h.ok(h.flow.propose("registry.example/model-server:v7", deployment="third"))
    h.ok(h.flow.propose("registry.example/model-server:v8", deployment="fourth"))
    for e in (h.core.entries or [])[size:]:
        assert state.fold(e) is None
    assert not index.current(state)
    assert index.update(state)
    assert {t: index.hashes(t) for t in index} == grouped(state)
    # A rollout started since: its proposal joins the ones with steps.
    size = h.core.size
    q = h.ok(h.flow.propose("registry.example/model-server:v5", deployment="fifth"))
    evals = (h.ok(h.flow.eval(q, "safety", 0.99)), h.ok(h.flow.eval(q, "quality", 0.91)))
    h.ok(h.flow.approve(q, evals, "alice"))
    h.ok(h.flow.approve(q, evals, "bob"))
    h.ok(h.flow.step(q, 0, 10, "STARTED"))
    for e in (h.core.entries or [])[size:]:
        assert state.fold(e) is None
    assert not index.current(state) and index.update(state)
    assert stepped_of(index)[Target("models", "fifth")] == [q]
    assert stepped_of(index) == grouped(state, stepped=True)
    assert index.hashes(Target("nowhere", "none")) == []
    # A state replaced (a replay from the start) is indexed from scratch.
    again = fold(h.core.entries or [])
    assert not index.current(again) and index.update(again)
    assert {t: index.hashes(t) for t in index} == grouped(again)


def test_the_target_index_keeps_seq_order_whatever_order_proposals_arrive_in() -> None:
    h, _ = longer_harness()
    for i in range(4):
        h.ok(h.flow.propose(f"registry.example/model-server:v1{i}", deployment="third"))
    state = fold(h.core.entries or [])
    state.ledger.proposals = dict(reversed(list(state.ledger.proposals.items())))
    index = TargetIndex()
    assert index.update(state)
    assert {t: index.hashes(t) for t in index} == grouped(state)


def test_plans_with_the_index_equal_plans_with_a_pass_over_every_proposal() -> None:
    h, _ = longer_harness()
    state = fold(h.core.entries or [])
    index = TargetIndex()
    index.update(state)
    observed = {t: ObservedTarget(ready(4, V1)) for t in index.targets()}
    assert plan(state, observed, h.now, index=index) == plan(state, observed, h.now)
    # An index that is behind the state is not used (the plan passes over every proposal).
    h.ok(h.flow.propose("registry.example/model-server:v9", deployment="late"))
    assert state.fold((h.core.entries or [])[-1]) is None
    assert not index.current(state)
    observed[Target("models", "late")] = ObservedTarget(ready(2, V1))
    assert plan(state, observed, h.now, index=index) == plan(state, observed, h.now)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_views_built_a_chunk_at_a_time_equal_the_views_built_at_once(chunk: int) -> None:
    h, _ = longer_harness()
    state = fold(h.core.entries or [])
    index = TargetIndex()
    index.update(state)
    observed = {t: ObservedTarget(ready(4, V1)) for t in index.targets()}
    actions = plan(state, observed, h.now)
    lock = threading.RLock()
    held: list[tuple[float, float]] = []
    chunked = views_in_chunks(lock, lambda: state, observed, actions, chunk=chunk, held=held)
    assert chunked == rollout_views(state, observed, actions)
    assert len(held) == -(-len(state.ledger.proposals) // chunk)  # one hold per chunk


def test_views_start_over_when_the_state_is_replaced_between_chunks() -> None:
    h, _ = longer_harness()
    state = fold(h.core.entries or [])
    states = [state]

    class Lock:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            states.append(fold(h.core.entries or []))  # a replay replaced it meanwhile

    assert views_in_chunks(Lock(), lambda: states[-1], {}, [], chunk=1) is None


def test_a_restored_proposal_is_decoded_with_its_window_not_the_whole_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_restore, "WINDOW", 2)
    h, _ = longer_harness()
    for i in range(5):
        h.ok(h.flow.propose(f"registry.example/model-server:v2{i}", deployment="third"))
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    snaps = SnapshotStore(tmp_path / "snap.db", background=False)
    r = Replayer(store, snapshots=snaps, source="t")
    r.catch_up()
    r.snapshot()
    fresh = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db"), source="t")
    assert fresh.load_snapshot()
    restored = list(fresh.state.ledger.proposals.values())
    assert len(restored) >= 6 and all(isinstance(p, ColumnProposal) for p in restored)
    assert all(set(p.__dict__) == {"_p", "_k"} for p in restored)  # nothing read at load
    part = restored[2].__dict__["_p"]
    _ = restored[2].proposal.target  # the third proposal: window [2, 4)
    assert "proposal" in restored[2].__dict__
    assert sorted(k for _i, k in part.decoded) == [3]  # its neighbour, waiting to be read
    assert not any("proposal" in p.__dict__ for i, p in enumerate(restored) if i != 2)
    assert fresh.state == fold(h.core.entries or [])  # and every other decodes as well


@pytest.mark.parametrize(
    ("names", "expect_stop"),
    [
        ("pending", True),  # a pending proposal of this target: its canary is rolled back
        ("other target", False),  # not this target's: not ours to touch
        ("uppercase", False),  # not the annotation the controller writes
        ("garbage", False),
    ],
)
def test_a_canary_is_finished_for_the_proposal_it_names_with_or_without_the_index(
    names: str, expect_stop: bool
) -> None:
    h, _ = longer_harness()
    pending = h.ok(h.flow.propose("registry.example/model-server:v6", deployment="idle"))
    elsewhere = h.ok(h.flow.propose("registry.example/model-server:v6", deployment="elsewhere"))
    state = fold(h.core.entries or [])
    index = TargetIndex()
    index.update(state)
    annotation = {
        "pending": pending.hex(),
        "other target": elsewhere.hex(),
        "uppercase": pending.hex().upper(),
        "garbage": "not-hex",
    }[names]
    target = Target("models", "idle")  # no rollout on it: a canary there is finished
    canary = ready(1, "registry.example/model-server:v6", proposal=annotation)
    observed = {target: ObservedTarget(ready(3, V1), canary)}
    plain = plan(state, observed, h.now)
    assert plan(state, observed, h.now, index=index) == plain
    assert any(a.__class__.__name__ == "StopCanary" for a in plain) == expect_stop


def test_a_restored_state_is_indexed_by_target_without_reading_any_evidence(
    tmp_path: Path,
) -> None:
    h, _ = longer_harness()
    store = SQLiteLogStore(tmp_path / "log.db")
    write_log(h, store)
    r = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db", background=False), source="t")
    r.catch_up()
    r.snapshot()
    fresh = Replayer(store, snapshots=SnapshotStore(tmp_path / "snap.db"), source="t")
    assert fresh.load_snapshot()
    restored = list(fresh.state.ledger.proposals.values())
    index = TargetIndex()
    assert index.update(fresh.state)
    parts = {id(p.__dict__["_p"]): p.__dict__["_p"] for p in restored}
    # No proposal document decoded: the targets come from the columns. (Finding each
    # target's latest step decodes the steps of one or two proposals.)
    proposal_field = _PROPOSAL_LAZY.index("proposal")
    assert not any(i == proposal_field for part in parts.values() for i, _w in part.windows)
    assert not any("proposal" in p.__dict__ for p in restored)
    # The target columns say what the evidence says.
    assert [p.known_target() for p in restored] == [p.proposal.target for p in restored]
    assert {t: index.hashes(t) for t in index} == grouped(fold(h.core.entries or []))
    assert stepped_of(index) == grouped(fold(h.core.entries or []), stepped=True)


def test_the_latest_step_is_found_as_max_finds_it_reading_few_steps() -> None:
    import random
    from types import SimpleNamespace

    from controller.target_index import latest_of

    class P:
        """A proposal with steps, counting the reads of its steps."""

        def __init__(self, i: int, last: int, read: list[int]) -> None:
            self.entry_hash = bytes([i]) * 32
            self.last, self.read = last, read

        @property
        def steps(self) -> list[SimpleNamespace]:
            self.read.append(self.last)
            return [SimpleNamespace(seq=self.last)]

    rng = random.Random(19)
    for _trial in range(200):
        seqs = rng.sample(range(10_000), rng.randint(1, 30))  # each entry names one proposal
        read: list[int] = []
        stepped = [P(i, s, read) for i, s in enumerate(seqs)]
        # The last entry naming a proposal is its last step or later; some are not known.
        last_seq = {
            p.entry_hash: p.last + rng.choice([0, 0, 1, 50]) for p in stepped if rng.random() > 0.1
        }
        found = latest_of(stepped, last_seq)  # type: ignore[arg-type]
        assert found is max(stepped, key=lambda p: p.last)
        if len(last_seq) == len(stepped) and len(stepped) > 10:
            assert len(read) < len(stepped)
    assert latest_of([], {}) is None
