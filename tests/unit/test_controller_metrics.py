"""Kill-switch reaction bookkeeping: every stop is timed once, fast ones too."""

from __future__ import annotations

from controller.metrics import KillTimer
from controller.view import RolloutView

P = b"\x01" * 32


def view(phase: str, canary: int) -> RolloutView:
    return RolloutView(P, "models", "model-server", phase, phase.title(), 0, 10, (), 2, 9,
                       "img:v2", "img:v1", 3, canary, 4 - canary, canary, canary, "TARGET", "")


def test_a_stop_seen_in_two_views_is_timed_from_the_first() -> None:
    timer = KillTimer()
    assert timer.update([view("STARTED", 1)], {P: 16}, 1000) == []
    assert timer.update([view("STARTED", 0)], {P: 16}, 1040) == [(P, 16, 1040)]
    assert timer.update([view("ROLLED_BACK", 0)], {P: 16}, 1100) == []  # once only


def test_a_stop_faster_than_any_view_is_still_timed_once() -> None:
    timer = KillTimer()
    assert timer.update([view("ROLLED_BACK", 0)], {P: 16}, 1010) == [(P, 16, 1010)]
    assert timer.update([view("ROLLED_BACK", 0)], {P: 16}, 1200) == []


def test_a_kill_switch_over_a_proposal_that_never_rolled_is_not_a_reaction() -> None:
    timer = KillTimer()
    assert timer.update([view("PENDING", 0)], {P: 16}, 1000) == []
    assert timer.update([view("PENDING", 0)], {}, 1100) == []
