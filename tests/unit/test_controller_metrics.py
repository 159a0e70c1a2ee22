"""Kill-switch reaction bookkeeping: every stop is timed once, fast ones too."""

from __future__ import annotations

from controller.metrics import KillTimer
from controller.view import RolloutView

P = b"\x01" * 32


def view(phase: str, canary: int, last_seq: int = 9) -> RolloutView:
    return RolloutView(
        P,
        "models",
        "model-server",
        phase,
        phase.title(),
        0,
        10,
        (),
        2,
        last_seq,
        "img:v2",
        "img:v1",
        3,
        canary,
        4 - canary,
        canary,
        canary,
        "TARGET",
        "",
    )


def test_a_stop_seen_in_two_views_is_timed_from_the_first() -> None:
    timer = KillTimer()
    assert timer.update([view("STARTED", 1)], {P: 16}, 1000) == []
    assert timer.update([view("STARTED", 0)], {P: 16}, 1040) == [(P, 16, 1040)]
    assert timer.update([view("ROLLED_BACK", 0)], {P: 16}, 1100) == []  # once only


def test_a_stop_faster_than_any_view_is_still_timed_once() -> None:
    timer = KillTimer()
    # The rollback recorded by the controller for this kill switch comes after it (seq 17).
    assert timer.update([view("ROLLED_BACK", 0, last_seq=17)], {P: 16}, 1010) == [(P, 16, 1010)]
    assert timer.update([view("ROLLED_BACK", 0, last_seq=17)], {P: 16}, 1200) == []


def test_a_kill_switch_over_a_proposal_that_never_rolled_is_not_a_reaction() -> None:
    timer = KillTimer()
    assert timer.update([view("PENDING", 0)], {P: 16}, 1000) == []
    assert timer.update([view("PENDING", 0)], {}, 1100) == []


def test_a_rollout_rolled_back_before_a_global_kill_switch_is_not_a_reaction() -> None:
    # Rolled back at seq 9 (say, a failed eval); a target-wide kill switch lands at seq 16:
    # nothing was stopped by it, so no reaction may be recorded (it would be the kill
    # switch's age, not a reaction time).
    timer = KillTimer()
    assert timer.update([view("ROLLED_BACK", 0, last_seq=9)], {P: 16}, 1010) == []
    assert timer.update([view("ROLLED_BACK", 0, last_seq=9)], {P: 16}, 5000) == []
    assert timer.pending == {}


def test_a_stop_first_seen_at_0_after_the_release_is_still_timed_once() -> None:
    # Views lag the cluster: the canary was still up in the last view before the release,
    # and the first view showing it at 0 comes after the kill switch was released.
    timer = KillTimer()
    assert timer.update([view("STARTED", 1)], {P: 16}, 1000) == []
    assert timer.update([view("ROLLED_BACK", 0, last_seq=17)], {}, 1300) == [(P, 16, 1300)]
    assert timer.update([view("ROLLED_BACK", 0, last_seq=17)], {}, 1400) == []


def test_a_release_while_the_canary_is_still_up_times_nothing() -> None:
    timer = KillTimer()
    assert timer.update([view("STARTED", 1)], {P: 16}, 1000) == []
    assert timer.update([view("STARTED", 1)], {}, 1300) == []
    assert timer.pending == {}
