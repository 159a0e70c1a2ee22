"""Notices from ledger entries (pure): one per RolloutStep, kill and release, the same whether
derived from the state at the entry or from any later state (what a restart re-reads with)."""

from __future__ import annotations

import dataclasses

from controller.notices import (
    KILL_TYPE,
    PAUSE_TYPE,
    RELEASE_TYPE,
    RESUME_TYPE,
    STEP_TYPE,
    RolloutRef,
    for_namespaces,
    notices_for,
    stopped_by,
)
from controller.notify import cloudevent
from ledger.formats import KillScope, RolloutStep
from ledger.rules import apply_checked
from ledger.state import LedgerState
from tests.unit.harness import Harness
from tests.unit.test_planner import Sim


def story() -> tuple[Harness, bytes]:
    """A rollout promoted, a second one killed by a TARGET kill switch, then released."""
    h = Harness()
    sim = Sim(h)
    p, _ = h.approved()
    sim.run()
    h.ok(h.flow.health(p, 1, True))
    sim.run()
    q = h.ok(h.flow.propose("registry.example/model-server:v3"))
    evals = (h.ok(h.flow.eval(q, "safety", 0.99)), h.ok(h.flow.eval(q, "quality", 0.91)))
    h.ok(h.flow.approve(q, evals, "alice"))
    h.ok(h.flow.approve(q, evals, "bob"))
    sim.run()
    scope = KillScope("TARGET", "models", "model-server")
    h.ok(h.flow.kill(scope, reason="latency spike"))
    sim.run()
    h.ok(h.flow.release(scope))
    return h, q


def test_one_notice_per_step_kill_and_release_and_none_otherwise() -> None:
    h, q = story()
    entries = h.core.entries or []
    final = h.core.state
    notices = [n for e in entries for n in notices_for(e, final)]
    steps = [e for e in entries if isinstance(e.body.payload, RolloutStep)]
    assert [n.seq for n in notices if n.type == STEP_TYPE] == [e.seq for e in steps]
    assert [n.type for n in notices].count(KILL_TYPE) == 1
    assert [n.type for n in notices].count(RELEASE_TYPE) == 1
    assert [n.seq for n in notices] == sorted(n.seq for n in notices)
    assert {n.entry_hash for n in notices} == {
        e.leaf_hash for e in entries if notices_for(e, final)
    }
    kill = next(n for n in notices if n.type == KILL_TYPE)
    # Only the rollout running when the switch was engaged: not the promoted one.
    assert [r.proposal for r in kill.rollouts] == [q]
    assert kill.warning and kill.reason == "KillSwitchEngaged" and kill.message == "latency spike"
    assert kill.scope == "TARGET models/model-server"
    phases = [n.phase for n in notices if n.type == STEP_TYPE]
    assert phases[:4] == ["STARTED", "ADVANCED", "ADVANCED", "PROMOTED"]
    assert phases[-1] == "ROLLED_BACK"
    rolled = [n for n in notices if n.phase == "ROLLED_BACK"]
    assert rolled[0].warning and rolled[0].reason == "RolledBack"


def test_a_notice_is_the_same_from_the_state_at_its_entry_or_a_later_one() -> None:
    h, _ = story()
    entries = h.core.entries or []
    final = h.core.state
    live = LedgerState()
    for e in entries:
        apply_checked(live, e)
        assert notices_for(e, live) == notices_for(e, final), e.seq


def test_a_kill_switch_that_stopped_nothing_names_no_rollout() -> None:
    h = Harness()
    h.base()
    h.ok(h.flow.kill(KillScope("GLOBAL")))
    (e,) = [e for e in h.core.entries or [] if notices_for(e, h.core.state)]
    (n,) = notices_for(e, h.core.state)
    assert n.rollouts == () and n.subject == "GLOBAL"
    assert stopped_by(h.core.state, KillScope("GLOBAL"), e.seq + 1) == ()


def test_the_cloudevent_is_structured_1_0_with_the_entry_hash_as_id() -> None:
    h, q = story()
    entries = h.core.entries or []
    step = next(e for e in entries if isinstance(e.body.payload, RolloutStep))
    (n,) = notices_for(step, h.core.state)
    ev = cloudevent(n, "steward.dev/ledger/rules", "rules")
    assert ev["specversion"] == "1.0" and ev["id"] == step.leaf_hash.hex()
    assert ev["type"] == "dev.steward.rollout.step"
    assert ev["source"] == "steward.dev/ledger/rules"
    assert ev["time"].endswith("Z") and ev["time"][:4] == "2026"
    assert ev["subject"].startswith("models/model-server-")
    data = ev["data"]
    assert (data["step"], data["weight"], data["phase"], data["seq"]) == (
        0,
        10,
        "STARTED",
        step.seq,
    )
    assert data["proposal"] == step.body.payload.proposal.hex()
    assert data["reason"] == step.body.payload.reason
    kill = next(n for e in entries for n in notices_for(e, h.core.state) if n.type == KILL_TYPE)
    kev = cloudevent(kill, "s", "rules")
    assert kev["type"] == "dev.steward.killswitch.engaged"
    assert kev["data"]["rollouts"][0]["proposal"] == q.hex()
    assert kev["data"]["scope"] == "TARGET models/model-server"


def test_a_signed_pause_and_its_resume_are_notices_about_their_rollout() -> None:
    h = Harness()
    sim = Sim(h)
    p, _ = h.approved()
    sim.tick()  # STARTED: a pause needs a running rollout
    h.ok(h.flow.pause(p, reason="latency looks odd"))
    h.ok(h.flow.resume(p))
    entries = h.core.entries or []
    found = [n for e in entries[-2:] for n in notices_for(e, h.core.state)]
    assert [(n.type, n.reason) for n in found] == [
        (PAUSE_TYPE, "PauseRequested"),
        (RESUME_TYPE, "RolloutResumed"),
    ]
    assert all([r.proposal for r in n.rollouts] == [p] for n in found)
    assert found[0].message == "latency looks odd"
    ev = cloudevent(found[0], "s", "rules")
    assert ev["type"] == "dev.steward.rollout.pause" and ev["data"]["proposal"] == p.hex()
    assert ev["subject"] == f"models/model-server-{p.hex()[:10]}"


def test_a_controller_announces_only_the_rollouts_it_manages() -> None:
    h, _ = story()
    entries = h.core.entries or []
    notices = [n for e in entries for n in notices_for(e, h.core.state)]
    assert all(for_namespaces(n, ("models",)) == n for n in notices)
    steps = [n for n in notices if n.type == STEP_TYPE]
    assert all(for_namespaces(n, ("other",)) is None for n in steps)
    kill = next(n for n in notices if n.type == KILL_TYPE)
    two = dataclasses.replace(
        kill, rollouts=(*kill.rollouts, RolloutRef(b"\x09" * 32, "other", "llm"))
    )
    assert for_namespaces(two, ("other",)) == dataclasses.replace(
        kill, rollouts=(RolloutRef(b"\x09" * 32, "other", "llm"),)
    )
    nothing = dataclasses.replace(kill, rollouts=())
    assert for_namespaces(nothing, ("other",)) == nothing  # about the scope: kept
