"""The read budget (ledger.limits.ReadBudget): a token bucket per peer for reads of history."""

from __future__ import annotations

import grpc
import pytest

from ledger.grpc_errors import ServiceError
from ledger.limits import RATE_LIMITED_CODE, RateLimit, ReadBudget
from ledger.server import build_parser


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_peer_past_its_burst_is_refused_until_a_token_comes_back() -> None:
    clock = _Clock()
    budget = ReadBudget(RateLimit(4.0, 3), clock)
    for _ in range(3):
        budget.charge("ip:10.0.0.7", "GetInclusionProof")
    with pytest.raises(ServiceError) as info:
        budget.charge("ip:10.0.0.7", "GetInclusionProof")
    err = info.value
    assert err.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.status.violation_code == RATE_LIMITED_CODE
    assert err.status.field == "read_rate_per_peer"
    assert str(err).startswith(
        "GetInclusionProof: rate limit read_rate_per_peer (4/s, burst 3) used up by peer "
        "ip:10.0.0.7; retry later"
    )
    budget.charge("ip:10.0.0.8", "Get")  # another peer has its own bucket
    clock.now += 0.25  # one token at 4/s
    budget.charge("ip:10.0.0.7", "Get")
    with pytest.raises(ServiceError):
        budget.charge("ip:10.0.0.7", "Get")


def test_the_flag_defaults_to_200_per_second_and_can_be_turned_off() -> None:
    base = ["--db", "l.db", "--checkpoint-key", "k.pem"]
    assert build_parser().parse_args(base).read_rate_per_peer == (200.0, 1000)
    assert (
        build_parser().parse_args([*base, "--read-rate-per-peer", "off"]).read_rate_per_peer is None
    )
    assert build_parser().parse_args([*base, "--read-rate-per-peer", "5:7"]).read_rate_per_peer == (
        5.0,
        7,
    )
