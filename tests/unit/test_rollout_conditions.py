"""ModelRollout conditions from the rollout's state: real logs (the rules, the planner on a
simulated cluster) folded into views, then the pure conditions function."""

from __future__ import annotations

import dataclasses

from controller.conditions import CONDITION_TYPES, desired_conditions, rollout_conditions
from controller.mirror import mirror_status, with_conditions
from controller.view import RolloutView, rollout_views
from ledger.formats import KillScope, NoDataRule, PlanStep
from tests.unit.harness import Harness
from tests.unit.test_planner import Sim
from tests.unit.test_planner_analysis import CHECK, at_step_1, report

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def view(sim: Sim) -> RolloutView:
    (v,) = rollout_views(sim.fold(), sim.observed(), sim.plan())
    return v


def table(v: RolloutView) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in desired_conditions(v)}


def test_a_promoted_rollout_walks_pending_progressing_completed() -> None:
    h = Harness()
    sim = Sim(h)
    h.approved()
    pending = table(view(sim))
    assert pending == {
        "Progressing": ("False", "AwaitingDecision"),
        "Paused": ("False", "NotPaused"),
        "Healthy": ("Unknown", "NotStarted"),
        "Completed": ("False", "NotPromoted"),
        "Aborted": ("False", "NotAborted"),
    }
    sim.run()  # to step 1, waiting for a healthy report
    v = view(sim)
    assert v.phase == "ADVANCED"
    assert table(v)["Progressing"] == ("True", "StepAdvanced")
    assert table(v)["Healthy"] == ("True", "NoFailure")
    (p,) = sim.cs.ledger.proposals
    h.ok(h.flow.health(p, 1, True))
    sim.run()
    done = view(sim)
    assert done.phase == "PROMOTED"
    assert table(done) == {
        "Progressing": ("False", "RolloutCompleted"),
        "Paused": ("False", "NotPaused"),
        "Healthy": ("True", "NoFailure"),
        "Completed": ("True", "Promoted"),
        "Aborted": ("False", "NotAborted"),
    }
    assert next(c for c in desired_conditions(done) if c.type == "Completed").message


def test_a_kill_switch_aborts_with_its_reason_and_healthy_unknown() -> None:
    h = Harness()
    sim = Sim(h)
    h.approved()
    sim.run()
    h.ok(h.flow.kill(KillScope("GLOBAL"), reason="pager: error budget burnt"))
    sim.run()
    v = view(sim)
    assert (v.phase, v.display_phase) == ("ROLLED_BACK", "Killed")
    t = table(v)
    assert t["Aborted"] == ("True", "KillSwitch")
    assert t["Healthy"] == ("Unknown", "KillSwitch")
    assert t["Progressing"] == ("False", "KillSwitch")
    aborted = next(c for c in desired_conditions(v) if c.type == "Aborted")
    assert "kill switch" in aborted.message


def test_an_automatic_rollback_is_unhealthy_and_aborted() -> None:
    h = Harness()
    sim = Sim(h)
    p, _ = h.approved()
    sim.run()
    h.ok(h.flow.health(p, 1, False))
    sim.run()
    t = table(view(sim))
    assert t["Aborted"] == ("True", "RolledBack")
    assert t["Healthy"] == ("False", "RolledBack")
    assert t["Completed"] == ("False", "NotPromoted")


def test_a_paused_step_sets_paused_and_stops_progressing() -> None:
    h = Harness()
    sim = Sim(h)
    paused = dataclasses.replace(CHECK, no_data=NoDataRule(60, "PAUSE"))
    p = at_step_1(h, sim, paused)
    report(h, p, None, check=paused)
    h.tick(61_000)
    sim.tick()
    v = view(sim)
    assert v.phase == "PAUSED"
    t = table(v)
    assert t["Paused"] == ("True", "RolloutPaused")
    assert t["Progressing"] == ("False", "RolloutPaused")
    assert (
        "no-data action PAUSE"
        in next(c for c in desired_conditions(v) if c.type == "Paused").message
    )


def test_pending_under_a_kill_switch_says_so() -> None:
    h = Harness()
    sim = Sim(h)
    h.base()
    h.ok(h.flow.kill(KillScope("GLOBAL")))
    h.ok(h.flow.propose())
    assert table(view(sim))["Progressing"] == ("False", "KillSwitchEngaged")


def test_transition_time_moves_only_when_the_status_flips() -> None:
    h = Harness()
    sim = Sim(h)
    h.approved()
    pending = view(sim)
    first = rollout_conditions(pending, [], 1, T0)
    assert [c["type"] for c in first] == list(CONDITION_TYPES)
    assert {c["lastTransitionTime"] for c in first} == {T0}
    assert {c["observedGeneration"] for c in first} == {1}
    # Same state, later, another message: no transition.
    again = rollout_conditions(dataclasses.replace(pending, message="still waiting"), first, 1, T1)
    assert {c["lastTransitionTime"] for c in again} == {T0}
    sim.run()
    moving = rollout_conditions(view(sim), again, 2, T1)
    times = {c["type"]: c["lastTransitionTime"] for c in moving}
    assert times == {
        "Progressing": T1,  # False -> True
        "Paused": T0,
        "Healthy": T1,  # Unknown -> True
        "Completed": T0,
        "Aborted": T0,
    }
    assert {c["observedGeneration"] for c in moving} == {2}


def test_the_mirror_status_carries_conditions_and_generation() -> None:
    h = Harness()
    sim = Sim(h)
    h.approved()
    v = view(sim)
    live = {"metadata": {"generation": 3}, "status": {"conditions": []}}
    status = with_conditions(mirror_status(v), v, live, T0)
    assert status["observedGeneration"] == 3
    assert {c["type"] for c in status["conditions"]} == set(CONDITION_TYPES)
    # Written back unchanged: equal, so the mirror writes nothing more.
    live["status"] = status
    assert with_conditions(mirror_status(v), v, live, T1) == status


def test_a_governed_pause_shows_at_once_and_a_resume_clears_it_before_the_next_step() -> None:
    h = Harness()
    sim = Sim(h)
    plan = (PlanStep(25, 10, False), PlanStep(100, 0, False))
    p, _ = h.approved(plan=plan)
    sim.run()
    assert table(view(sim))["Progressing"] == ("True", "RolloutStarted")
    # Signed on the log, not yet recorded by the controller: already Paused.
    h.ok(h.flow.pause(p, signer="oncall", reason="p99 latency up"))
    assert view(sim).phase == "STARTED"
    assert table(view(sim))["Paused"] == ("True", "RolloutPaused")
    assert table(view(sim))["Progressing"] == ("False", "RolloutPaused")
    # ... and says who paused it and why, not why it started (the last record's reason).
    early = {c.type: c for c in desired_conditions(view(sim))}
    assert "p99 latency up" in early["Paused"].message, early["Paused"].message
    assert "oncall" in early["Paused"].message and "approved by" not in early["Paused"].message
    sim.run()  # the controller records PAUSED and holds
    assert view(sim).phase == "PAUSED"
    paused = {c.type: c for c in desired_conditions(view(sim))}
    assert paused["Paused"].status == "True" and paused["Paused"].message == early["Paused"].message
    # Resumed: progressing again at once, though the last record is PAUSED until the hold ends.
    h.ok(h.flow.resume(p))
    assert view(sim).phase == "PAUSED"
    assert table(view(sim))["Paused"] == ("False", "NotPaused")
    assert table(view(sim))["Progressing"] == ("True", "RolloutResumed")
    h.tick(10_000)
    sim.run()
    assert table(view(sim))["Completed"] == ("True", "Promoted")
