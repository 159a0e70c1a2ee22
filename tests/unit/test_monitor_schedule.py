"""steward-monitor's pure part: which measurements are due, the reports they make, and how a
restarted monitor continues from the log without reporting anything twice."""

from __future__ import annotations

import pytest

from ledger.core import DuplicateEventIdError
from ledger.events import new_body, sign
from ledger.formats import Sample
from ledger.state import LedgerState
from monitor.prometheus import _value_of
from monitor.schedule import Evidence, due, next_due_ms, report, report_event_id
from tests.unit.harness import Harness
from tests.unit.test_planner_analysis import CHECK


def _at_step_1(h: Harness) -> tuple[bytes, bytes, int]:
    p, _ = h.approved(analysis=(CHECK,))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    run = h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    return p, run, h.now


def _evidence_from_log(h: Harness) -> Evidence:
    """What a monitor starting now reads back from the log."""
    state, evidence = LedgerState(), Evidence()
    assert h.core.entries is not None
    for e in h.core.entries:
        state.apply(e)
        evidence.observe(state, e)
    return evidence


def _submit(h: Harness, payload: object, event_id: bytes) -> None:
    refs = h.core.state.binding_refs(payload)  # type: ignore[arg-type]
    body = new_body(h.flow.ledger, payload, refs=refs, event_id=event_id, issued_at=h.now)  # type: ignore[arg-type]
    h.ok(sign(body, h.cast["monitor"].key))


def test_measurements_fall_due_an_interval_apart_until_a_verdict() -> None:
    h = Harness()
    p, run, started = _at_step_1(h)
    state = h.core.state
    assert due(state, Evidence(), started + 9_000) == []  # an interval after the run began
    assert next_due_ms(state, Evidence(), started) == started + 10_000
    (d,) = due(state, Evidence(), started + 10_000)
    assert d.run == run and d.step == 1 and 'track="canary"' in d.query
    taken = started + 10_000
    for value in (0.01, None, 0.02, 0.03):
        evidence = _evidence_from_log(h)
        (d,) = due(state, evidence, taken)
        payload, event_id = report(d, Sample(taken, value, "" if value else "no data"), taken)
        _submit(h, payload, event_id)
        taken += 10_000
    assert payload.healthy and payload.checks[0].verdict == "PASS"
    assert len(payload.checks[0].samples) == 4
    assert due(state, _evidence_from_log(h), taken + 60_000) == []  # decided: no more
    assert h.core.state.proposals[p].checks[1]["error-rate"].verdict == "PASS"


def test_a_restarted_monitor_never_reports_a_measurement_twice() -> None:
    h = Harness()
    _p, _run, started = _at_step_1(h)
    state = h.core.state
    (d,) = due(state, Evidence(), started + 10_000)
    payload, event_id = report(d, Sample(started + 10_000, 0.01, ""), started + 10_000)
    _submit(h, payload, event_id)
    # The monitor crashed after submitting; measuring again at once for the same slot makes
    # another body with the same event id, which the ledger refuses.
    again, again_id = report(d, Sample(started + 10_500, 0.02, ""), started + 10_500)
    assert again_id == event_id
    with pytest.raises(DuplicateEventIdError):
        _submit(h, again, again_id)
    # Read back from the log, the run continues at its second measurement.
    evidence = _evidence_from_log(h)
    assert due(state, evidence, started + 15_000) == []
    (d2,) = due(state, evidence, started + 20_000)
    assert len(d2.previous) == 1
    _payload, second_id = report(d2, Sample(started + 20_000, 0.01, ""), started + 20_000)
    assert second_id == report_event_id(d.proposal, d.run, "error-rate", 2) != event_id


def test_prometheus_answers_become_values_or_inconclusive_samples() -> None:
    def vector(*values: str) -> dict[str, object]:
        return {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": {}, "value": [1.0, v]} for v in values],
            },
        }

    assert _value_of(vector("0.25"), 5).value == 0.25
    assert _value_of(vector(), 5) == Sample(5, None, "no data")
    assert _value_of(vector("1", "2"), 5).detail.startswith("2 series")
    assert _value_of(vector("NaN"), 5).value is None
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}
    assert _value_of(scalar, 5).value == 3.0
    error = {"status": "error", "errorType": "bad_data", "error": "parse error\nat char 3"}
    sample = _value_of(error, 5)
    assert sample.value is None and "\n" not in sample.detail
