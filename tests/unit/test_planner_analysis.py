"""The planner on steps gated by automated analysis: it advances on passing checks, rolls back
at the failure limit, holds without a verdict until the deadline and then acts as the policy
says; every record's reason names the check and the value (docs/ANALYSIS.md)."""

from __future__ import annotations

import dataclasses

import pytest

from controller.planner import RecordStep, StopCanary, Wait
from ledger.analysis import judge, render_query
from ledger.formats import CheckEvidence, HealthCheck, NoDataRule, Sample
from tests.unit.harness import Harness
from tests.unit.test_planner import Sim, T, kinds

CHECK = HealthCheck(
    name="error-rate",
    query='sum(rate(http_requests_total{{canary_selector},code=~"5.."}[1m]))',
    op="LE",
    threshold=0.05,
    interval_seconds=10,
    count=3,
    failure_limit=2,
    steps=None,
    no_data=NoDataRule(60, "ROLLBACK"),
)


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def sim(h: Harness) -> Sim:
    return Sim(h)


def report(h: Harness, p: bytes, *values: float | None, check: HealthCheck = CHECK) -> None:
    """A monitor's report on step 1 with these samples and the verdict they make."""
    samples = tuple(
        Sample(h.now + i, v, "" if v is not None else "no data") for i, v in enumerate(values)
    )
    verdict = judge(check, samples).verdict
    evidence = CheckEvidence(check.name, render_query(check, T), h.now, samples, verdict)
    h.ok(h.flow.health(p, 1, verdict == "PASS", checks=(evidence,)))


def at_step_1(h: Harness, sim: Sim, check: HealthCheck = CHECK) -> bytes:
    p, _ = h.approved(analysis=(check,))
    sim.run()
    assert sim.phases(p)[-1] == (1, 50, "ADVANCED")
    return p


def test_passing_checks_advance_and_the_reason_names_them(h: Harness, sim: Sim) -> None:
    p = at_step_1(h, sim)
    wait = sim.plan()
    assert kinds(wait) == ["Wait"] and "error-rate: no report yet" in wait[0].message  # type: ignore[union-attr]
    report(h, p, 0.01, None)
    wait = sim.plan()
    assert kinds(wait) == ["Wait"] and "1 inconclusive" in wait[0].message  # type: ignore[union-attr]
    report(h, p, 0.01, None, 0.02, 0.03)
    actions = sim.tick()
    assert isinstance(actions[0], RecordStep) and actions[0].phase == "ADVANCED"
    assert "checks passed: error-rate: 3 of 3 measurements" in actions[0].reason
    assert "last 0.03" in actions[0].reason
    sim.run()
    assert sim.phases(p)[-1] == (2, 100, "PROMOTED")


def test_the_failure_limit_rolls_back_naming_the_check_and_value(h: Harness, sim: Sim) -> None:
    p = at_step_1(h, sim)
    report(h, p, 0.2)  # one failure: the limit is 2
    assert kinds(sim.plan()) == ["Wait"]
    report(h, p, 0.2, 0.01, 0.31)
    actions = sim.plan()
    assert isinstance(actions[0], StopCanary)
    assert "error-rate: 0.31 is not LE 0.05 (2 of failure limit 2)" in actions[0].reason
    sim.run()
    last = sim.h.core.state.proposals[p].steps[-1]
    assert (last.step, last.weight, last.phase) == (1, 0, "ROLLED_BACK")
    assert sim.canary is None


def test_no_data_holds_until_the_deadline_then_rolls_back(h: Harness, sim: Sim) -> None:
    p = at_step_1(h, sim)
    report(h, p, None, None)
    wait = sim.plan()
    assert kinds(wait) == ["Wait"]
    assert "ROLLBACK in" in wait[0].message  # type: ignore[union-attr]
    h.tick(61_000)  # past the 60 s deadline since the step began
    actions = sim.plan()
    assert isinstance(actions[0], StopCanary)
    assert "check error-rate has no verdict 60s after the step began" in actions[0].reason
    assert "last inconclusive (no data)" in actions[0].reason
    sim.run()
    assert sim.phases(p)[-1] == (1, 0, "ROLLED_BACK")


def test_a_silent_monitor_meets_the_deadline_rule_too(h: Harness, sim: Sim) -> None:
    p = at_step_1(h, sim)
    h.tick(61_000)
    actions = sim.plan()
    assert isinstance(actions[0], StopCanary) and "error-rate: no report" in actions[0].reason
    sim.run()
    assert sim.phases(p)[-1] == (1, 0, "ROLLED_BACK")


def test_past_the_deadline_a_pause_policy_stops_where_it_is(h: Harness, sim: Sim) -> None:
    paused = dataclasses.replace(CHECK, no_data=NoDataRule(60, "PAUSE"))
    p = at_step_1(h, sim, paused)
    report(h, p, None, check=paused)
    h.tick(61_000)
    actions = sim.tick()
    assert isinstance(actions[0], RecordStep) and actions[0].phase == "PAUSED"
    assert "no-data action PAUSE" in actions[0].reason
    assert sim.replicas() == (2, 2)  # the canary keeps its weight
    h.tick(1000)
    again = sim.plan()
    assert kinds(again) == ["Wait"] and again[0].message.startswith("paused:")  # type: ignore[union-attr]
    # Data comes back: the checks pass and the rollout goes on.
    report(h, p, None, 0.01, 0.01, 0.01, check=paused)
    sim.run()
    assert sim.phases(p)[-1] == (2, 100, "PROMOTED")


def test_a_manual_unhealthy_report_still_rolls_back_an_analysed_step(h: Harness, sim: Sim) -> None:
    p = at_step_1(h, sim)
    h.ok(h.flow.health(p, 1, False))
    actions = sim.plan()
    assert isinstance(actions[0], StopCanary) and "unhealthy report" in actions[0].reason
    assert not isinstance(actions[0], Wait)
