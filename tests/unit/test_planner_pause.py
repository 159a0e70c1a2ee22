"""The planner and a governed pause (RolloutPaused / RolloutResumed on the log).

A paused rollout records one PAUSED at its current step and weight and then holds there; a
resume lets it go on from that step, whose hold time starts again; a kill switch still wins.
Logs are built with the real rules and the in-memory cluster of tests/unit/test_planner.py.
"""

from __future__ import annotations

import pytest

from controller.planner import RecordStep, pause_step_event_id
from ledger.formats import KillScope, PlanStep
from tests.unit.harness import Harness
from tests.unit.test_planner import Sim, kinds
from tests.unit.test_planner_analysis import at_step_1

# Step 0 holds 10 s, so a test can see the hold start again after a resume.
PLAN = (PlanStep(25, 10, False), PlanStep(50, 0, False), PlanStep(100, 0, False))


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def sim(h: Harness) -> Sim:
    return Sim(h)


def _at_step_0(h: Harness, sim: Sim, **policy: object) -> bytes:
    p, _ = h.approved(plan=PLAN, **policy)
    sim.run()
    assert sim.phases(p) == [(0, 25, "STARTED")] and sim.replicas() == (3, 1)
    return p


def test_a_pause_records_paused_once_and_holds_the_weight(h: Harness, sim: Sim) -> None:
    p = _at_step_0(h, sim)
    pause = h.ok(h.flow.pause(p, signer="oncall", reason="p99 latency up"))
    first = sim.tick()
    assert kinds(first) == ["RecordStep:PAUSED"]
    record = first[0]
    assert isinstance(record, RecordStep)
    assert (record.step, record.weight) == (0, 25)
    assert record.event_id == pause_step_event_id(p, pause)
    assert "paused by human:oncall@example.org" in record.reason and "p99" in record.reason
    # Long past the step's hold: nothing moves, nothing more is recorded.
    h.tick(60_000)
    for _ in range(3):
        actions = sim.tick()
        assert kinds(actions) == ["Wait"], actions
        h.tick(5_000)
    message = actions[0].message  # type: ignore[union-attr]
    assert "holding step 0 at 25%" in message and "resumed by 1 approver" in message
    assert sim.phases(p) == [(0, 25, "STARTED"), (0, 25, "PAUSED")]
    assert sim.replicas() == (3, 1)


def test_a_resume_goes_on_from_the_step_whose_hold_starts_again(h: Harness, sim: Sim) -> None:
    p = _at_step_0(h, sim)
    h.ok(h.flow.pause(p))
    sim.run()
    h.tick(60_000)  # the step was entered more than its 10 s hold ago
    h.ok(h.flow.resume(p))
    waits = sim.plan()
    assert kinds(waits) == ["Wait"] and "holding step 0" in waits[0].message  # type: ignore[union-attr]
    h.tick(10_000)
    assert kinds(sim.plan())[0] == "RecordStep:ADVANCED"
    sim.run()
    assert [ph for _s, _w, ph in sim.phases(p)] == [
        "STARTED",
        "PAUSED",
        "ADVANCED",
        "ADVANCED",
        "PROMOTED",
    ]
    assert sim.canary is None and sim.replicas() == (4, 0)


def test_a_second_pause_at_the_same_step_is_recorded_again(h: Harness, sim: Sim) -> None:
    # Each pause has its own record id: a deduplicated id would leave the second unrecorded.
    p = _at_step_0(h, sim)
    first = h.ok(h.flow.pause(p))
    sim.run()
    h.ok(h.flow.resume(p))
    second = h.ok(h.flow.pause(p, signer="oncall"))
    actions = sim.tick()
    assert kinds(actions) == ["RecordStep:PAUSED"]
    assert actions[0].event_id == pause_step_event_id(p, second)  # type: ignore[union-attr]
    assert pause_step_event_id(p, first) != pause_step_event_id(p, second)
    assert [ph for _s, _w, ph in sim.phases(p)] == ["STARTED", "PAUSED", "PAUSED"]


def test_a_kill_switch_wins_over_a_pause(h: Harness, sim: Sim) -> None:
    p = _at_step_0(h, sim)
    h.ok(h.flow.pause(p))
    sim.run()
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=p)))
    actions = sim.plan()
    assert kinds(actions) == ["StopCanary", "ScaleStable", "RecordStep:ROLLED_BACK", "RemoveCanary"]
    sim.run()
    assert sim.phases(p)[-1] == (0, 0, "ROLLED_BACK")
    assert sim.canary is None and sim.replicas() == (4, 0)
    assert h.core.state.proposals[p].pause is None  # the rollback ended the pause


def test_a_pause_before_the_stable_shrank_still_applies_the_step(h: Harness, sim: Sim) -> None:
    # Paused right after STARTED: the canary is up, the stable not yet shrunk. The pause is
    # recorded at once and the step's objects are still applied: the weight held is the step's.
    p, _ = h.approved(plan=PLAN)
    assert kinds(sim.tick()) == ["RecordStep:STARTED", "ApplyCanary"]
    h.ok(h.flow.pause(p))
    assert kinds(sim.tick()) == ["RecordStep:PAUSED", "ScaleStable"]
    assert sim.replicas() == (3, 1)
    assert kinds(sim.tick()) == ["Wait"]


def test_while_paused_a_late_check_does_not_roll_back_for_want_of_data(
    h: Harness, sim: Sim
) -> None:
    # The check gating step 1 rolls back after 60 s without a verdict; a pause waits for
    # people, not for data, and the no-data clock starts again at the resume.
    p = at_step_1(h, sim)
    h.ok(h.flow.pause(p))
    sim.run()
    h.tick(3_600_000)
    assert kinds(sim.plan()) == ["Wait"]
    h.ok(h.flow.resume(p))
    assert kinds(sim.plan()) == ["Wait"]
    h.tick(61_000)
    assert "RecordStep:ROLLED_BACK" in kinds(sim.plan())


def test_the_rollout_view_shows_paused_from_the_pause_to_the_resume(h: Harness, sim: Sim) -> None:
    from controller.view import rollout_views

    def display() -> str:
        (view,) = rollout_views(sim.fold(), sim.observed())
        return view.display_phase

    p = _at_step_0(h, sim)
    assert display() == "Progressing"
    h.ok(h.flow.pause(p))
    assert display() == "Paused"  # before the controller records PAUSED
    sim.run()
    assert display() == "Paused"
    h.ok(h.flow.resume(p))
    assert display() == "Progressing"  # its last record is still the PAUSED one
