"""Automated analysis in the ledger's rules: a policy's checks, and health reports whose
verdicts are recomputed from their signed samples (docs/ANALYSIS.md)."""

from __future__ import annotations

import dataclasses

import pytest

from ledger.analysis import judge, render_query
from ledger.formats import (
    CheckEvidence,
    HealthCheck,
    NoDataRule,
    PolicySet,
    Sample,
    Target,
    decode_body,
)
from ledger.names import first_payload_problem
from tests.unit.harness import Harness

TARGET = Target("models", "model-server")
ERRORS = HealthCheck(
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


@pytest.fixture(params=["in-memory", "spilled"])
def h(request: pytest.FixtureRequest) -> Harness:
    """On the in-memory state and on a server's, spilled to disk (tests/unit/harness.py)."""
    return Harness.on(request.param)


def _samples(*values: float | None) -> tuple[Sample, ...]:
    return tuple(
        Sample(1000 * i, v, "" if v is not None else "no data") for i, v in enumerate(values)
    )


def _evidence(verdict: str, *values: float | None, check: HealthCheck = ERRORS) -> CheckEvidence:
    return CheckEvidence(check.name, render_query(check, TARGET), 9000, _samples(*values), verdict)


def test_verdicts_walk_the_samples_in_order() -> None:
    assert judge(ERRORS, _samples()).verdict == "INCONCLUSIVE"
    assert judge(ERRORS, _samples(0.01, None, 0.02)).verdict == "INCONCLUSIVE"
    assert judge(ERRORS, _samples(0.01, None, 0.02, 0.03)).verdict == "PASS"
    assert judge(ERRORS, _samples(0.01, 0.2, 0.02)).verdict == "PASS"  # 1 failure < limit 2
    failed = judge(ERRORS, _samples(0.2, 0.01, 0.3))
    assert failed.verdict == "FAIL" and "0.3 is not LE 0.05" in failed.why
    # After the deciding sample nothing changes the verdict.
    assert judge(ERRORS, _samples(0.01, 0.01, 0.01, 0.9, 0.9)).verdict == "PASS"
    # A value that is not finite is inconclusive, like no value.
    assert judge(ERRORS, _samples(float("nan"), float("inf"))).inconclusive == 2


def test_queries_are_rendered_for_the_target() -> None:
    rendered = render_query(ERRORS, TARGET)
    assert rendered == (
        'sum(rate(http_requests_total{namespace="models",app="model-server",track="canary",'
        'code=~"5.."}[1m]))'
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"count": 0}, "count"),
        ({"failure_limit": 4}, "failure_limit"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"steps": (0,)}, "steps"),  # step 0 of the default plan is not health-gated
        ({"steps": ()}, "steps"),
        ({"no_data": NoDataRule(29, "ROLLBACK")}, "no_data.deadline_seconds"),
        ({"query": ""}, "query"),
    ],
)
def test_a_policys_checks_must_be_able_to_decide(
    h: Harness, change: dict[str, object], field: str
) -> None:
    h.ok(h.flow.genesis())
    bad = dataclasses.replace(ERRORS, **change)  # type: ignore[arg-type]
    err = h.refused(h.flow.policy(analysis=(bad,)), "INVALID_FIELD")
    assert err.violation.field == f"payload.analysis[0].{field}"


def test_two_checks_of_one_name_are_refused(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.refused(h.flow.policy(analysis=(ERRORS, ERRORS)), "INVALID_FIELD")


def _at_gated_step(h: Harness) -> bytes:
    p, _ = h.approved(analysis=(ERRORS,))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    return p


def test_advance_past_a_gated_step_rests_on_passing_checks(h: Harness) -> None:
    p = _at_gated_step(h)
    h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "HEALTH_GATE")
    h.ok(h.flow.health(p, 1, False, checks=(_evidence("INCONCLUSIVE", 0.01, None),)))
    err = h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "HEALTH_GATE")
    assert "error-rate: INCONCLUSIVE" in err.violation.message
    # A report judged by hand does not open a gate that checks hold.
    h.ok(h.flow.health(p, 1, True))
    h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "HEALTH_GATE")
    h.ok(h.flow.health(p, 1, True, checks=(_evidence("PASS", 0.01, None, 0.02, 0.03),)))
    h.ok(h.flow.step(p, 2, 100, "ADVANCED"))
    state = h.core.state.proposals[p]
    assert state.checks[1]["error-rate"].values == (0.01, None, 0.02, 0.03)


def test_a_verdict_that_contradicts_its_samples_is_refused(h: Harness) -> None:
    p = _at_gated_step(h)
    lie = _evidence("PASS", 0.2, 0.3, 0.01)  # two failures reach the limit: FAIL
    err = h.refused(h.flow.health(p, 1, True, checks=(lie,)), "HEALTH_VERDICT_MISMATCH")
    assert err.violation.field == "payload.checks[0].verdict"
    assert "the samples make FAIL" in err.violation.message
    fine = _evidence("PASS", 0.01, 0.02, 0.03)
    err = h.refused(h.flow.health(p, 1, False, checks=(fine,)), "HEALTH_VERDICT_MISMATCH")
    assert err.violation.field == "payload.healthy"
    h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "HEALTH_GATE")


def test_evidence_must_be_the_policys_check_and_query(h: Harness) -> None:
    p = _at_gated_step(h)
    other = dataclasses.replace(ERRORS, name="latency")
    err = h.refused(
        h.flow.health(p, 1, False, checks=(_evidence("INCONCLUSIVE", check=other),)),
        "INVALID_FIELD",
    )
    assert err.violation.field == "payload.checks[0].name"
    swapped = dataclasses.replace(_evidence("PASS", 0.0, 0.0, 0.0), query="vector(0)")
    err = h.refused(h.flow.health(p, 1, True, checks=(swapped,)), "INVALID_FIELD")
    assert err.violation.field == "payload.checks[0].query"


def test_a_container_name_is_a_dns_label() -> None:
    policy = _policy_payload()
    assert policy.container is None and policy.readiness_grace_seconds is None
    problem = first_payload_problem(dataclasses.replace(policy, container="Model_Server"))
    assert problem is not None and problem.field == "payload.container"
    assert problem.code == "NAME_INVALID"
    assert first_payload_problem(dataclasses.replace(policy, container="model-server")) is None


def test_a_negative_readiness_grace_is_refused(h: Harness) -> None:
    h.ok(h.flow.genesis())
    policy = dataclasses.replace(_policy_payload(), readiness_grace_seconds=-1)
    err = h.refused(h.flow.event(policy, "root1", "root2"), "INVALID_FIELD")
    assert err.violation.field == "payload.readiness_grace_seconds"


def _policy_payload() -> PolicySet:
    payload = decode_body(Harness().flow.policy().body).payload
    assert isinstance(payload, PolicySet)
    return payload
