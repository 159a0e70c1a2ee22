"""The penalty box's rule on a fake clock (ledger.limits.PenaltyBox), and its flag."""

from __future__ import annotations

import argparse

import grpc
import pytest

from ledger.grpc_errors import ServiceError
from ledger.limits import PENALTY_BOX_CODE, PenaltyBox, PenaltyRule
from ledger.server_flags import penalty_rule


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _refusal(box: PenaltyBox, peer: str) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        box.check(peer)
    return info.value


def test_strikes_within_the_window_box_the_peer_for_the_cooldown() -> None:
    clock = Clock()
    box = PenaltyBox(PenaltyRule(3, 10, 30), clock)
    for _ in range(2):
        box.strike("cert:research-infra")
        clock.now += 1
    box.check("cert:research-infra")  # two strikes: not yet
    box.strike("cert:research-infra")
    err = _refusal(box, "cert:research-infra")
    status = err.status
    assert (status.code, status.violation_code, status.field) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        PENALTY_BOX_CODE,
        "penalty_box",
    )
    assert "3 rate-limit refusals within 10 s" in status.message
    assert "peer cert:research-infra" in status.message and "30.0 s more" in status.message
    assert "KillSwitchEngaged" in status.message
    box.check("cert:bench")  # another peer never shares the box
    clock.now += 29.9
    assert "0.1 s more" in _refusal(box, "cert:research-infra").status.message
    clock.now += 0.1
    box.check("cert:research-infra")  # the cool-down is over
    box.strike("cert:research-infra")  # and the count started again from nothing
    box.check("cert:research-infra")


def test_a_peer_that_goes_on_stays_boxed_one_that_backs_off_gets_out() -> None:
    clock = Clock()
    box = PenaltyBox(PenaltyRule(3, 10, 5), clock)
    for peer in ("flooder", "patient"):
        for _ in range(3):
            box.strike(peer)
    for _ in range(60):  # 30 s of an attempt every 0.5 s: the cool-down keeps starting again
        clock.now += 0.5
        _refusal(box, "flooder")
    clock.now += 1  # the patient one tried nothing: out after one cool-down, long ago
    box.check("patient")
    _refusal(box, "flooder")  # the flooder is still inside its last cool-down
    clock.now += 5
    box.check("flooder")  # it stopped for a cool-down: out


def test_strikes_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    box = PenaltyBox(PenaltyRule(3, 10, 30), clock)
    for _ in range(10):  # one strike every 5 s: never three within 10 s
        box.strike("ip:10.0.0.7")
        clock.now += 5
        box.check("ip:10.0.0.7")


class Gone:
    """Stands for the event the gate sets when the held call ends; records the waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return False


def test_a_held_stream_waits_at_most_hold_s_and_never_past_the_box() -> None:
    clock = Clock()
    box = PenaltyBox(PenaltyRule(1, 10, 5), clock, hold_s=1.0)
    box.strike("p")
    gone = Gone()
    box.hold("p", gone)  # type: ignore[arg-type]
    assert gone.waits == [1.0]
    clock.now += 4.75
    box.hold("p", gone)  # type: ignore[arg-type]
    assert gone.waits[1] == pytest.approx(0.25)  # the box ends sooner: so does the hold
    box.hold("not-boxed", gone)  # type: ignore[arg-type]
    assert len(gone.waits) == 2  # a peer that is not boxed is not held


def test_forgotten_peers_do_not_grow_the_tables() -> None:
    clock = Clock()
    box = PenaltyBox(PenaltyRule(1, 1, 1), clock)
    for i in range(PenaltyBox._SWEEP_EVERY - 1):
        box.strike(f"ip:10.0.{i // 256}.{i % 256}")
    clock.now += 5
    box.strike("ip:192.0.2.1")  # the sweep runs on this call
    assert set(box._until) == {"ip:192.0.2.1"}
    assert set(box._strikes) <= {"ip:192.0.2.1"}


@pytest.mark.parametrize(
    ("rule", "message"),
    [((0, 10, 10), "strikes >= 1"), ((3, 0, 10), "window > 0"), ((3, 10, -1), "cooldown > 0")],
)
def test_a_rule_that_cannot_work_is_refused(rule: tuple[int, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PenaltyRule(*rule)


def test_the_flag() -> None:
    assert penalty_rule("16:10:10") == (16, 10.0, 10.0)
    assert penalty_rule("off") is None
    for bad in ("16:10", "a:b:c", "0:10:10", "3:10:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            penalty_rule(bad)
