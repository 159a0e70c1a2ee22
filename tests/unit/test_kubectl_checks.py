"""`kubectl steward get` shows each check's latest values and verdict, folded from the ledger."""

from __future__ import annotations

from controller.kubectl import render, rows
from controller.kubectl.sources import check_rows
from tests.unit.harness import Harness
from tests.unit.test_planner_analysis import CHECK, report


def test_get_shows_each_checks_latest_values_and_verdict() -> None:
    h = Harness()
    p, _ = h.approved(analysis=(CHECK,))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    report(h, p, 0.01, None)
    report(h, p, 0.01, None, 0.2, 0.3)
    (row,) = check_rows(h.core.state.proposals[p])
    assert (row.name, row.step, row.verdict, row.values) == (
        "error-rate",
        1,
        "FAIL",
        (0.01, None, 0.2, 0.3),
    )
    info = rows.RolloutInfo(
        "model-server-x", "models", "model-server", p.hex(), "Progressing", 1, 50, checks=(row,)
    )
    lines = render.render_header(info, rows.ClusterView())
    line = next(x for x in lines if x.startswith("Checks:"))
    assert "error-rate FAIL at step 1 [0.01, -, 0.2, 0.3]" in line
    assert "0.3 is not LE 0.05" in line
